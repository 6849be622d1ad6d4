"""How many log records one rule may write: a client sending `lora_name` on every request at
high load must not flood the journal (or the loop) with one supervisor record per request.
Counters (status, metrics) still count every event; only the records are limited. Pure."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EventLogLimiter"]


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class EventLogLimiter:
    """At most `per_window` records per rule per `window` seconds."""

    def __init__(self, per_window: int = 20, window: float = 60.0) -> None:
        self.per_window = per_window
        self.window = window
        self._windows: dict[str, _Window] = {}

    def admit(self, rule: str, now: float) -> tuple[bool, int]:
        """(log this one?, how many of this rule were suppressed in the window just ended)."""
        current = self._windows.get(rule)
        ended_suppressed = 0
        if current is None or now - current.start >= self.window:
            ended_suppressed = current.suppressed if current else 0
            current = self._windows[rule] = _Window(now)
        if current.logged < self.per_window:
            current.logged += 1
            return True, ended_suppressed
        current.suppressed += 1
        return False, ended_suppressed
