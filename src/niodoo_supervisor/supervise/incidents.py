"""What reaches the supervisor's loop (incidents) and how one run of vLLM ended (outcomes)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.logs.rule_types import Event

__all__ = [
    "ChildExited",
    "Incident",
    "LogEvent",
    "Outcome",
    "OutcomeKind",
    "ReloadAsked",
    "ReloadDone",
    "ReloadResult",
    "StopAsked",
]


@dataclass(frozen=True)
class ChildExited:
    pid: int  # a stopped child's exit arrives after its successor started: match the pid
    returncode: int


@dataclass(frozen=True)
class LogEvent:
    event: Event
    run: int  # which run wrote it: a stopped run's late lines must not steer the next


@dataclass(frozen=True)
class StopAsked:
    reason: str  # "SIGTERM received"


@dataclass(frozen=True)
class ReloadAsked:
    """SIGHUP: read the config again (in a task; its result comes back as `ReloadDone`)."""


@dataclass(frozen=True)
class ReloadResult:
    """A reload's config and its launch plan, or (both None) the errors that refused it."""

    config: Config | None
    plan: LaunchPlan | None
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReloadDone:
    result: ReloadResult


Incident = ChildExited | LogEvent | StopAsked | ReloadAsked | ReloadDone


class OutcomeKind(enum.Enum):
    STOP = "stop"  # asked to stop: end vLLM and exit 0
    FATAL = "fatal"  # retrying cannot help: end vLLM and exit 78
    FAILED = "failed"  # crashed, hung or unhealthy: back off and start again
    RELOAD = "reload"  # a new config: start again at once


@dataclass(frozen=True)
class Outcome:
    """How one run of vLLM ended, from the loop's point of view."""

    kind: OutcomeKind
    reason: str
    rule: str | None = None
