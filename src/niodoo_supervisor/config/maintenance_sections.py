"""The `maintenance` section: when a planned restart may happen.

`maintenance.windows` is a list of daily or weekly ranges of local time, each in its own IANA
time zone (`zoneinfo`; the `tzdata` package supplies the database where the system has none).
Each item is checked here, every problem at once with its own YAML path; when a window is open
and when the next one opens is `supervise/windows.py`'s arithmetic.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import time
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import Field, PlainSerializer, PlainValidator, WithJsonSchema

from niodoo_supervisor.config.fields import Kind
from niodoo_supervisor.config.value_types import ItemProblem, Section, item_problems
from niodoo_supervisor.config.values import shown, type_name

__all__ = ["WEEKDAYS", "MaintenanceSection", "Window", "Windows", "parse_windows"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_KEYS = ("days", "start", "end", "tz")
_CLOCK = re.compile(r"^(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)$")
_EXAMPLE = '`- {days: [sun], start: "02:00", end: "04:00", tz: Europe/Berlin}`'
_ZONE_FIX = "use an IANA time zone name such as Europe/Berlin, America/New_York or UTC"


@dataclass(frozen=True)
class Window:
    """One `maintenance.windows` item. An opening starts on each of `days` (0 = Monday, as
    `date.weekday()`) at `start` on the clock of `tz`, and ends at `end`: the same day when
    `end` is later, the next day when it is earlier, 24 hours later when they are equal."""

    start: time
    end: time
    tz: str
    days: tuple[int, ...] = tuple(range(7))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)  # zoneinfo caches one instance per name

    def as_yaml(self) -> dict[str, object]:
        """The item as the YAML would write it (what `model_dump` gives)."""
        written: dict[str, object] = {"start": f"{self.start:%H:%M}", "end": f"{self.end:%H:%M}"}
        if len(self.days) < 7:
            written = {"days": [WEEKDAYS[day] for day in self.days], **written}
        return {**written, "tz": self.tz}

    def __str__(self) -> str:
        days = "daily" if len(self.days) == 7 else ",".join(WEEKDAYS[day] for day in self.days)
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.tz}"


def parse_windows(value: object, path: str) -> tuple[tuple[Window, ...], list[ItemProblem]]:
    """The windows of a YAML list, and a (path, message, fix) for each problem in it."""
    problems: list[ItemProblem] = []
    if value is None:
        return (), problems
    if not isinstance(value, (list, tuple)):
        problems.append(
            (path, f"must be a list of windows, not {type_name(value)}", f"write {_EXAMPLE}")
        )
        return (), problems
    windows = []
    for index, item in enumerate(value):
        window = _window(item, f"{path}[{index}]", problems)
        if window is not None:
            windows.append(window)
    return tuple(windows), problems


def _window(item: object, where: str, problems: list[ItemProblem]) -> Window | None:
    if not isinstance(item, dict):
        problems.append(
            (where, "must be a mapping with start, end and tz (and days)", f"write {_EXAMPLE}")
        )
        return None
    found = len(problems)
    for key in item:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            fix = f"did you mean {close[0]}?" if close else f"window keys are {', '.join(_KEYS)}"
            problems.append((f"{where}.{key}", "unknown key", fix))
    days = _days(item.get("days"), f"{where}.days", problems)
    start = _clock(item.get("start"), f"{where}.start", problems)
    end = _clock(item.get("end"), f"{where}.end", problems)
    tz = _zone(item.get("tz"), f"{where}.tz", problems)
    if len(problems) > found or start is None or end is None or tz is None:
        return None
    return Window(start, end, tz, days)


def _days(value: object, where: str, problems: list[ItemProblem]) -> tuple[int, ...]:
    if value is None:  # absent or left empty: every day
        return tuple(range(7))
    fix = "write a list such as [sat, sun], or leave days out for every day"
    if not isinstance(value, (list, tuple)):
        problems.append((where, f"must be a list of days, not {type_name(value)}", fix))
        return ()
    if not value:
        problems.append((where, "is empty, so the window would never open", fix))
        return ()
    days: set[int] = set()
    for index, day in enumerate(value):
        name = day.strip().lower() if isinstance(day, str) else str(day)
        if name in WEEKDAYS or name in _FULL_NAMES:
            days.add(WEEKDAYS.index(name[:3]))
            continue
        close = difflib.get_close_matches(name, WEEKDAYS + _FULL_NAMES, n=1)
        problems.append(
            (
                f"{where}[{index}]",
                f"{shown(day)} is not a day",
                f"did you mean {close[0][:3]}?" if close else f"use {', '.join(WEEKDAYS)}",
            )
        )
    return tuple(sorted(days))


def _clock(value: object, where: str, problems: list[ItemProblem]) -> time | None:
    key = where.rsplit(".", 1)[-1]
    if value is None:
        problems.append((where, "required key is missing", f'add {key}: "HH:MM" (24-hour clock)'))
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        # YAML 1.1 reads an unquoted 2:30 as the base-60 number 150.
        written = f"{value // 60}:{value % 60:02d}"
        problems.append(
            (
                where,
                f"YAML read the unquoted {written} as the number {value}",
                f'quote it: {key}: "{value // 60:02d}:{value % 60:02d}"',
            )
        )
        return None
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        fix = 'write "HH:MM" on a 24-hour clock, in quotes, e.g. "02:00"'
        if isinstance(value, str) and value.strip() == "24:00":
            fix = 'write "00:00": an end at or before the start is on the next day'
        problems.append((where, f"{shown(value)} is not a time of day", fix))
        return None
    return time(int(match["hour"]), int(match["minute"]))


def _zone(value: object, where: str, problems: list[ItemProblem]) -> str | None:
    if value is None:
        problems.append((where, "required key is missing", f"add tz: {_ZONE_FIX}"))
        return None
    if not isinstance(value, str):
        problems.append((where, f"must be a time zone name, not {type_name(value)}", _ZONE_FIX))
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.append((where, f"{shown(value)} is not a known time zone", _zone_fix(value)))
        return None
    return value


def _zone_fix(value: str) -> str:
    # Not `localtime` or `posixrules`: files of this machine's database, not zone names.
    names = sorted(name for name in available_timezones() if "/" in name or name.isupper())
    same = [name for name in names if name.lower() == value.strip().lower()]
    close = same or difflib.get_close_matches(value, names, n=1, cutoff=0.7)
    return f"did you mean {close[0]}?" if close else _ZONE_FIX


def _validated(value: Any) -> tuple[Window, ...]:
    windows, problems = parse_windows(value, "maintenance.windows")
    if problems:
        raise item_problems(problems)
    return windows


_WINDOWS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["start", "end", "tz"],
        "additionalProperties": False,
        "properties": {
            "days": {
                "type": "array",
                "minItems": 1,
                "items": {"enum": [*WEEKDAYS, *_FULL_NAMES]},
            },
            "start": {"type": "string", "pattern": _CLOCK.pattern},
            "end": {"type": "string", "pattern": _CLOCK.pattern},
            "tz": {"type": "string", "minLength": 1},
        },
    },
}

Windows = Annotated[
    tuple[Window, ...],
    Kind.WINDOWS,
    PlainValidator(_validated),
    PlainSerializer(lambda windows: [window.as_yaml() for window in windows]),
    WithJsonSchema(_WINDOWS_SCHEMA),
    Field(
        description="When a planned restart may happen: a list of {days, start, end, tz}, e.g. "
        '`{days: [sun], start: "02:00", end: "04:00", tz: Europe/Berlin}`. `days` (mon ... '
        "sun) are the days an opening starts on; absent: every day. `start` and `end` are "
        '"HH:MM" on a 24-hour clock, quoted; an `end` at or before `start` is on the next '
        'day ("23:00"-"01:00"), and `start` = `end` means 24 hours. `tz` is an IANA time '
        "zone. Open from `start` up to, not including, `end`. On a day the clocks jump "
        "forward, a time the jump skips means the instant of the jump (02:30-04:00 opens at "
        "03:00), and a window the jump skips whole opens then for its written length; on a "
        "day they fall back, a repeated time means its first pass, so a window opens once. "
        "A reload that needs a restart of vLLM outside every window is a pending restart: the "
        "old vLLM keeps serving until the next opening, when it restarts once. No windows: "
        "any time (a restart happens at once). Changing the windows restarts nothing.",
    ),
]


class MaintenanceSection(Section):
    """maintenance: when planned restarts may happen."""

    windows: Windows = ()
