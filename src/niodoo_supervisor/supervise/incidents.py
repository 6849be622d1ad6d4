"""What reaches the supervisor's loop (incidents) and how one run of vLLM ended (outcomes)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.logs.rule_types import Event

__all__ = [
    "AdapterLoadAsked",
    "AdapterUnloadAsked",
    "ChildExited",
    "Incident",
    "LogEvent",
    "Outcome",
    "OutcomeKind",
    "ReloadAsked",
    "ReloadDone",
    "ReloadResult",
    "Reply",
    "RestartAsked",
    "StopAsked",
]

# Where the loop answers an operator's command (the control API awaits it); None: nobody waits.
Reply = asyncio.Future[CommandResult]


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
    """SIGHUP or the control API: read the config again (in a task; its result comes back as
    `ReloadDone`). `reply`, when given, is answered once the reload is taken or refused."""

    reply: Reply | None = None


@dataclass(frozen=True)
class RestartAsked:
    """`niodoo-supervisor restart`: a planned restart now, or at the next maintenance window."""

    now: bool
    reply: Reply | None = None


@dataclass(frozen=True)
class AdapterLoadAsked:
    """`niodoo-supervisor adapters load NAME PATH`: load into the running vLLM."""

    name: str
    path: str
    reply: Reply | None = None


@dataclass(frozen=True)
class AdapterUnloadAsked:
    """`niodoo-supervisor adapters unload NAME`: unload from the running vLLM."""

    name: str
    reply: Reply | None = None


@dataclass(frozen=True)
class ReloadResult:
    """A reload's config and its launch plan, or (both None) the errors that refused it."""

    config: Config | None
    plan: LaunchPlan | None
    errors: list[str] = field(default_factory=list)
    # The control API's callers waiting for this reload (the dispatcher attaches them): the
    # loop answers them once it has taken or refused the result.
    replies: tuple[Reply, ...] = ()


@dataclass(frozen=True)
class ReloadDone:
    result: ReloadResult


Incident = (
    ChildExited
    | LogEvent
    | StopAsked
    | ReloadAsked
    | ReloadDone
    | RestartAsked
    | AdapterLoadAsked
    | AdapterUnloadAsked
)


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
    # Why a restart: a `restarts` metric reason (`control.metrics.RESTART_REASONS`); None:
    # derived from `kind` and `rule` (`metrics_feed.restart_reason`).
    cause: str | None = None
