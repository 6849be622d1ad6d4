"""Counts of events per rule, per ignored request field and per unknown model name, for the
status file (and from it, systemd's STATUS= and `status`: `request_mistakes`).

One `EventCounters` lives as long as the supervisor: restarts of vLLM add to the same counts.
A supervisor restart starts from zero, like its Prometheus counters.

Clients choose the field and model names, so what is kept is bounded whatever they send: a
name is cut to `MAX_FIELD_NAME` characters (a trailing "…" says so), at most `max_fields`
distinct names are counted on their own and the rest together as "(other)", and a rule's
last line is cut to `MAX_LAST_LINE` characters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from niodoo_supervisor.logs.builtin_rules import IGNORED_FIELDS_RULE, UNKNOWN_MODEL_RULE
from niodoo_supervisor.logs.rule_types import Event

__all__ = ["OTHER_FIELDS", "EventCounters", "NameCounts", "clip_field_name"]

MAX_FIELD_NAME = 64
MAX_LAST_LINE = 500
OTHER_FIELDS = "(other)"


def clip_field_name(name: str) -> str:
    return name if len(name) <= MAX_FIELD_NAME else name[:MAX_FIELD_NAME] + "…"


class NameCounts:
    """Counts and last times of client-chosen names: at most `max_names` distinct ones, the
    rest as "(other)"."""

    def __init__(self, max_names: int) -> None:
        self._max = max_names
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def add(self, name: str, n: int, now: float) -> None:
        name = clip_field_name(name)
        if name not in self.counts and len(self.counts) >= self._max:
            name = OTHER_FIELDS
        self.counts[name] = self.counts.get(name, 0) + n
        self.last[name] = now


class EventCounters:
    """Counts per rule, per ignored request field and per unknown model, and each rule's
    last occurrence."""

    def __init__(self, clock: Callable[[], float] = time.time, max_fields: int = 200) -> None:
        self._clock = clock
        self.rules: dict[str, int] = {}
        self.last: dict[str, tuple[float, str]] = {}
        self.ignored_fields = NameCounts(max_fields)
        self.unknown_models = NameCounts(max_fields)

    @property
    def fields(self) -> dict[str, int]:
        return self.ignored_fields.counts

    def add(self, event: Event) -> None:
        now = self._clock()
        self.rules[event.rule] = self.rules.get(event.rule, 0) + 1
        probe = event.message[:100]
        line = next(
            (ln for ln in event.lines if probe in ln), event.lines[0] if event.lines else ""
        )
        if len(line) > MAX_LAST_LINE:
            line = line[:MAX_LAST_LINE] + "…"
        self.last[event.rule] = (now, line)
        if event.rule == IGNORED_FIELDS_RULE:
            for name in event.details.get("fields", []):
                self.ignored_fields.add(str(name), 1, now)
            more = event.details.get("more_fields", 0)
            if more:
                self.ignored_fields.add(OTHER_FIELDS, int(more), now)
        elif event.rule == UNKNOWN_MODEL_RULE:
            self.unknown_models.add(str(event.details.get("model", "")), 1, now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rules": {
                name: {"count": n, "last_time": self.last[name][0], "last_line": self.last[name][1]}
                for name, n in sorted(self.rules.items())
            },
            "ignored_fields": dict(sorted(self.ignored_fields.counts.items())),
            "ignored_fields_last": dict(sorted(self.ignored_fields.last.items())),
            "unknown_models": dict(sorted(self.unknown_models.counts.items())),
            "unknown_models_last": dict(sorted(self.unknown_models.last.items())),
        }
