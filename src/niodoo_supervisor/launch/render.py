"""A launch plan as people see it (`niodoo-supervisor render`, the daemon's `starting` event):
shell-quoted, one flag per line or all on one, every secret redacted. The plan itself is made
in plan.py.
"""

from __future__ import annotations

import json
import re
import shlex

from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.launch.topology import Role

__all__ = [
    "REDACTED",
    "flag_groups",
    "format_command",
    "format_env",
    "format_role",
    "plan_json",
    "redact",
    "redacted_argv",
    "redacted_env",
]

REDACTED = "<redacted>"
# Environment variables whose values are shown redacted (HF_TOKEN, VLLM_API_KEY, ...).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redacted_argv(plan: LaunchPlan) -> list[str]:
    return [redact(arg, plan.secrets) for arg in plan.argv]


def redacted_env(plan: LaunchPlan) -> dict[str, str]:
    return {
        key: REDACTED if _SECRET_NAME.search(key) else redact(value, plan.secrets)
        for key, value in plan.env.items()
    }


def plan_json(plan: LaunchPlan) -> str:
    shown: dict[str, object] = {"argv": redacted_argv(plan), "env": redacted_env(plan)}
    if plan.role.role is not Role.SINGLE:
        companion = plan.companion
        shown["role"] = plan.role.describe
        shown["companion"] = companion and {
            "name": companion.name,
            "argv": [redact(arg, plan.secrets) for arg in companion.argv],
        }
    return json.dumps(shown, indent=2)


def format_command(plan: LaunchPlan, *, one_line: bool = False) -> str:
    """Shell-quoted, redacted: one flag (with its values) per line, or all on one line."""
    argv = redacted_argv(plan)
    if not argv:
        return "# no vLLM on this host"  # a `ray-worker`: its Ray node only (format_role)
    if one_line:
        return shlex.join(argv)
    groups = flag_groups(argv)
    # Keep the interpreter, -m and the module (and `serve MODEL`) together on the first line.
    head = groups.pop(0)
    while groups and groups[0][0] == "-m":
        head.extend(groups.pop(0))
    lines = [shlex.join(head)] + ["    " + shlex.join(group) for group in groups]
    return " \\\n".join(lines)


def format_role(plan: LaunchPlan) -> str:
    """`# rank 1 of 2 (headless, dp)`, and the companion's command when there is one; empty
    on a single host (today's output unchanged)."""
    if plan.role.role is Role.SINGLE:
        return ""
    lines = [f"# {plan.role.describe}"]
    if plan.companion is not None:
        command = shlex.join(redact(arg, plan.secrets) for arg in plan.companion.argv)
        lines.append(f"# companion {plan.companion.name} (started before vLLM): {command}")
    return "\n".join(lines)


def flag_groups(argv: list[str]) -> list[list[str]]:
    """argv as [[the command and its first words], [flag, values...], ...]; a negative
    number is a value, not a flag."""
    groups: list[list[str]] = []
    for arg in argv:
        if (arg.startswith("-") and not _is_number(arg)) or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def format_env(plan: LaunchPlan) -> str:
    return "\n".join(
        f"{key}={shlex.quote(value)}" for key, value in sorted(redacted_env(plan).items())
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
