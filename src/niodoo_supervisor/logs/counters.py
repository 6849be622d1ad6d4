"""Counts of events per rule and per ignored request field, for the status file.

Clients choose the field names, so what is kept is bounded whatever they send: a name is cut
to `MAX_FIELD_NAME` characters (a trailing "…" says so), at most `max_fields` distinct names
are counted on their own and the rest together as "(other)", and a rule's last line is cut
to `MAX_LAST_LINE` characters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from niodoo_supervisor.logs.builtin_rules import IGNORED_FIELDS_RULE
from niodoo_supervisor.logs.rule_types import Event

__all__ = ["OTHER_FIELDS", "EventCounters", "clip_field_name"]

MAX_FIELD_NAME = 64
MAX_LAST_LINE = 500
OTHER_FIELDS = "(other)"


def clip_field_name(name: str) -> str:
    return name if len(name) <= MAX_FIELD_NAME else name[:MAX_FIELD_NAME] + "…"


class EventCounters:
    """Counts per rule and per ignored request field, and each rule's last occurrence."""

    def __init__(self, clock: Callable[[], float] = time.time, max_fields: int = 200) -> None:
        self._clock = clock
        self._max_fields = max_fields
        self.rules: dict[str, int] = {}
        self.fields: dict[str, int] = {}
        self.last: dict[str, tuple[float, str]] = {}

    def add(self, event: Event) -> None:
        self.rules[event.rule] = self.rules.get(event.rule, 0) + 1
        probe = event.message[:100]
        line = next(
            (ln for ln in event.lines if probe in ln), event.lines[0] if event.lines else ""
        )
        if len(line) > MAX_LAST_LINE:
            line = line[:MAX_LAST_LINE] + "…"
        self.last[event.rule] = (self._clock(), line)
        if event.rule == IGNORED_FIELDS_RULE:
            for name in event.details.get("fields", []):
                self._count(clip_field_name(str(name)), 1)
            more = event.details.get("more_fields", 0)
            if more:
                self._count(OTHER_FIELDS, int(more))

    def _count(self, name: str, n: int) -> None:
        if name not in self.fields and len(self.fields) >= self._max_fields:
            name = OTHER_FIELDS
        self.fields[name] = self.fields.get(name, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "rules": {
                name: {"count": n, "last_time": self.last[name][0], "last_line": self.last[name][1]}
                for name, n in sorted(self.rules.items())
            },
            "ignored_fields": dict(sorted(self.fields.items())),
        }
