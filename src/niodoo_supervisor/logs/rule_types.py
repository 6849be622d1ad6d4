"""The rule types the rule table, operator rules and the rule machinery share: `Rule`,
`Severity`, `Action`, `Event` (a leaf module, so each of them can import it without a cycle).

Actions, as the supervisor applies them:

- ``log``: an event (journal, counters, status) and nothing else.
- ``phase``: startup progress; feeds systemd ``STATUS=`` and extends the start timeout.
- ``check_now``: the engine died; probe health now and restart without waiting.
- ``fatal``: a start failure retrying cannot fix; applied only while starting, at other
  times it is an error event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Action", "Event", "Rule", "Severity"]


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
    """One known line. `pattern` runs on the message (the line without its header).

    It must match at the start of the message, or right after an exception type such as
    ``ValueError: `` (`trust.trusted_starts`): text further into a line may quote a
    client. Only `anywhere` rules (operator log and phase rules) are searched for anywhere.
    """

    name: str
    pattern: str
    severity: Severity
    action: Action
    hint: str
    anchors: tuple[str, ...] = ()  # empty: derived from `pattern`
    phase: str | None = None
    anywhere: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """A rule hit. `lines` are the raw lines of the whole record (a traceback: all), each
    cut to a bounded length, as `message` is."""

    rule: str
    severity: Severity
    action: Action
    hint: str
    message: str
    process: str | None
    pid: int | None
    timestamp: str | None
    lines: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (enums as their values)."""
        plain = asdict(self)
        return {**plain, "severity": self.severity.value, "action": self.action.value,
                "lines": list(self.lines)}  # fmt: skip
