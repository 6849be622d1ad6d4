"""What a reload changes: the running config and plan against the new ones, key by key, each
change with what it takes to apply.

- `restart`: vLLM's argv, environment or logging config (and what vLLM reads once, such as the
  log rules of its pump): vLLM is stopped and started with the new config.
- `supervisor`: how the supervisor watches, restarts and stops vLLM: applied at once, vLLM
  keeps serving.
- `daemon`: read once when the supervisor itself starts (the vLLM log file, its echo, the format of the records):
  restarting vLLM would not apply them; `systemctl restart` does.
- `live`: applied to the running vLLM: items of `lora.adapters` added, removed or moved to
  another path when `lora.runtime_updates` is true before and after (`live_adapters` loads and
  unloads them). Any other LoRA key (max_loras, max_lora_rank...) still restarts vLLM, and so
  does a new adapter that makes `max_lora_rank: auto` resolve higher (the command line changes).

A key not named in the tables below restarts vLLM: a new key is safe before it is classified.
The plan is compared too, for what no key explains (an API key file's content, an upgraded
vLLM, `max_lora_rank: auto` resolving differently). Values are shown with every secret
redacted: the API key never appears.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.config.loader import ALL_FIELDS, Config
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.launch.render import REDACTED, redact, redacted_env
from niodoo_supervisor.logs.rule_types import Rule

__all__ = ["Change", "ConfigDiff", "KeyClass", "class_of", "diff"]


class KeyClass(enum.Enum):
    RESTART = "restart"
    SUPERVISOR = "supervisor"
    DAEMON = "daemon"
    LIVE = "live"


# Keys (or sections, ending in ".") the running supervisor applies at once.
SUPERVISOR_KEYS = (
    "supervisor.startup_timeout",
    "supervisor.startup_stall_timeout",
    "supervisor.health.",
    "supervisor.restart.",
    "supervisor.stop.",
    "supervisor.log.crash_report_lines",
    "maintenance.",  # when a pending restart happens: the planner reads the newest windows
    "drain.announce",
    "lora.verify",  # the effect probe runs in the supervisor
)
# Keys read once at the supervisor's own start (vLLM's log file and echo, the records' format).
DAEMON_KEYS = (
    "supervisor.log.path",
    "supervisor.log.max_bytes",
    "supervisor.log.backup_count",
    "supervisor.log.echo",
    "supervisor.log.format",
    "supervisor.control.",
    "supervisor.metrics.",
    "drain.readiness_listen",
)
_ABSENT = "(absent)"
_ADAPTERS_KEY = "lora.adapters"
_ADAPTERS_FLAG = "--lora-modules"


def class_of(key: str) -> KeyClass:
    """What a change of `key` takes to apply."""
    if any(_matches(key, entry) for entry in SUPERVISOR_KEYS):
        return KeyClass.SUPERVISOR
    if any(_matches(key, entry) for entry in DAEMON_KEYS):
        return KeyClass.DAEMON
    return KeyClass.RESTART


def _matches(key: str, entry: str) -> bool:
    return key.startswith(entry) if entry.endswith(".") else key == entry


@dataclass(frozen=True)
class Change:
    key: str  # a config key, or what of the plan changed ("vLLM command line")
    kind: KeyClass
    old: str
    new: str

    def describe(self) -> str:
        return f"{self.key}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class ConfigDiff:
    changes: tuple[Change, ...]

    @property
    def unchanged(self) -> bool:
        return not self.changes

    @property
    def needs_restart(self) -> bool:
        return bool(self.keys(KeyClass.RESTART))

    def keys(self, kind: KeyClass) -> list[str]:
        return [change.key for change in self.changes if change.kind is kind]

    def restart_reason(self) -> str:
        return f"config changed: {', '.join(self.keys(KeyClass.RESTART))}"


def diff(
    running: Config, new: Config, running_plan: LaunchPlan, new_plan: LaunchPlan
) -> ConfigDiff:
    """Every change from the running config and plan to the new ones."""
    secrets = running_plan.secrets + new_plan.secrets
    changes: list[Change] = []
    for field in ALL_FIELDS:
        old, now = field.value_in(running), field.value_in(new)
        if old == now:
            continue
        kind = class_of(field.key)
        if field.key == _ADAPTERS_KEY and _adapters_live(running, new):
            kind = KeyClass.LIVE
        if field.key == "server.env":
            changes.extend(_env_changes(running_plan, new_plan, old, now, kind))
        elif field.secret:
            changes.append(Change(field.key, kind, REDACTED, REDACTED))
        else:
            changes.append(Change(field.key, kind, _shown(old, secrets), _shown(now, secrets)))
    if not any(change.kind is KeyClass.RESTART for change in changes):
        live = any(change.kind is KeyClass.LIVE for change in changes)
        changes.extend(_plan_changes(running_plan, new_plan, adapters_live=live))
    return ConfigDiff(tuple(changes))


def _adapters_live(running: Config, new: Config) -> bool:
    return running.lora.runtime_updates and new.lora.runtime_updates


def _without_adapters(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The command line without the values of --lora-modules (adapters changed live)."""
    if _ADAPTERS_FLAG not in argv:
        return argv
    start = argv.index(_ADAPTERS_FLAG)
    end = start + 1
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1  # adapter values are name=/absolute/path or JSON: never "--"
    return argv[:start] + argv[end:]


def _env_changes(
    running_plan: LaunchPlan, new_plan: LaunchPlan, old: object, now: object, kind: KeyClass
) -> list[Change]:
    """One change per variable of `server.env`, its values as the plans' redacted environment
    shows them (HF_TOKEN and the like never appear)."""
    assert isinstance(old, Mapping) and isinstance(now, Mapping)
    before, after = redacted_env(running_plan), redacted_env(new_plan)
    return [
        Change(
            f"server.env.{name}",
            kind,
            before.get(name, _ABSENT) if name in old else _ABSENT,
            after.get(name, _ABSENT) if name in now else _ABSENT,
        )
        for name in sorted(set(old) | set(now))
        if old.get(name) != now.get(name)
    ]


def _plan_changes(running: LaunchPlan, new: LaunchPlan, *, adapters_live: bool) -> list[Change]:
    """What differs in the plans when no config key that restarts vLLM changed (the adapters'
    part of the command line aside when they change live)."""
    secrets = running.secrets + new.secrets
    changes: list[Change] = []
    old_argv, new_argv = running.argv, new.argv
    if adapters_live:
        old_argv, new_argv = _without_adapters(old_argv), _without_adapters(new_argv)
    if old_argv != new_argv:
        old, now = _changed_segments(old_argv, new_argv)
        changes.append(
            Change(
                "vLLM command line", KeyClass.RESTART, redact(old, secrets), redact(now, secrets)
            )
        )
    before, after = redacted_env(running), redacted_env(new)
    for name in sorted(set(running.env) | set(new.env)):
        if running.env.get(name) != new.env.get(name):
            changes.append(
                Change(
                    f"vLLM environment {name}",
                    KeyClass.RESTART,
                    before.get(name, _ABSENT),
                    after.get(name, _ABSENT),
                )
            )
    if (running.logging_config_path, running.logging_config) != (
        new.logging_config_path,
        new.logging_config,
    ):
        changes.append(
            Change(
                "vLLM logging config",
                KeyClass.RESTART,
                str(running.logging_config_path),
                str(new.logging_config_path),
            )
        )
    if running.vllm_version != new.vllm_version:
        # The running vLLM is the one installed before: only a restart runs the new one.
        changes.append(
            Change(
                "installed vLLM",
                KeyClass.RESTART,
                running.vllm_version or "unknown",
                new.vllm_version or "unknown",
            )
        )
    return changes


def _changed_segments(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, str]:
    """The arguments that differ, old and new, without those both share."""
    removed: list[str] = []
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new).get_opcodes():
        if tag != "equal":
            removed.extend(old[i1:i2])
            added.extend(new[j1:j2])
    return " ".join(removed) or _ABSENT, " ".join(added) or _ABSENT


def _shown(value: object, secrets: tuple[str, ...]) -> str:
    return redact(_text(value), secrets)


def _text(value: object) -> str:
    if value is None:
        return _ABSENT
    if isinstance(value, Adapter):
        return f"{value.name}={value.path}"
    if isinstance(value, Rule):
        return value.name
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}={_text(item)}" for key, item in value.items()) + "}"
    return str(value)
