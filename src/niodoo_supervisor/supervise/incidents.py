"""What reaches the supervisor's loop (incidents) and how one run of vLLM ended (outcomes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.logs.rule_types import Event

__all__ = ["ChildExited", "Incident", "LogEvent", "Outcome", "ReloadResult", "SignalReceived"]


@dataclass(frozen=True)
class ChildExited:
    pid: int  # a stopped child's exit arrives after its successor started: match the pid
    returncode: int


@dataclass(frozen=True)
class LogEvent:
    event: Event


@dataclass(frozen=True)
class SignalReceived:
    signum: int


Incident = ChildExited | LogEvent | SignalReceived


@dataclass(frozen=True)
class Outcome:
    """How one run of vLLM ended, from the loop's point of view."""

    kind: str  # "stop", "fatal", "failed", "reload"
    reason: str
    rule: str | None = None


@dataclass(frozen=True)
class ReloadResult:
    """A reload's config and its launch plan, or (both None) the errors that refused it."""

    config: Config | None
    launch: LaunchPlan | None
    errors: list[str] = field(default_factory=list)

    @property
    def api_key(self) -> str | None:
        return self.launch.api_key if self.launch else None
