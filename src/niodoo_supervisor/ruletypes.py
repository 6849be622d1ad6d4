"""The rule types the rule table, operator rules and the rule machinery share: `Rule`,
`Severity`, `Action` (a leaf module, so each of them can import it without a cycle).

Actions, as the supervisor applies them:

- ``log``: an event (journal, counters, status) and nothing else.
- ``phase``: startup progress; feeds systemd ``STATUS=`` and extends the start timeout.
- ``check_now``: the engine died; probe health now and restart without waiting.
- ``fatal``: a start failure retrying cannot fix; applied only while starting, at other
  times it is an error event.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Action", "Rule", "Severity"]


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Action(str, Enum):
    LOG = "log"
    PHASE = "phase"
    CHECK_NOW = "check_now"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Rule:
    """One known line. `pattern` runs on the message (the line without its header)."""

    name: str
    pattern: str
    severity: Severity
    action: Action
    hint: str
    anchors: tuple[str, ...] = ()  # empty: derived from `pattern`
    phase: str | None = None
