"""`maintenance.windows` in the YAML: what is accepted, and one line per problem naming the
item's path, its line and the fix."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.config.maintenance_sections import Window

BASE = "server: {python: /v/bin/python}\nmodel: {path: /models/m}\n"


def load(windows: str) -> tuple[Config | None, list[str]]:
    config, problems = parse_config(
        BASE + "maintenance:\n  windows:\n" + windows, base_dir=Path("/"), environ={}
    )
    return config, [problem.format() for problem in problems]


def test_windows_are_read_with_days_absent_meaning_every_day() -> None:
    config, problems = load(
        '    - {days: [sun, Saturday], start: "02:00", end: "04:00", tz: Europe/Berlin}\n'
        '    - {start: "23:30", end: "00:30", tz: UTC}\n'
        '    - {days: [mon], start: "00:00", end: "00:00", tz: America/New_York}\n'
    )
    assert problems == []  # windows are acted on: no warning that they are not
    assert config is not None
    assert config.maintenance.windows == (
        Window(time(2), time(4), "Europe/Berlin", (5, 6)),
        Window(time(23, 30), time(0, 30), "UTC", tuple(range(7))),
        Window(time(0), time(0), "America/New_York", (0,)),
    )
    assert [str(window) for window in config.maintenance.windows] == [
        "sat,sun 02:00-04:00 Europe/Berlin",
        "daily 23:30-00:30 UTC",
        "mon 00:00-00:00 America/New_York",
    ]
    assert config.maintenance.model_dump(mode="json")["windows"][0] == {
        "days": ["sat", "sun"],
        "start": "02:00",
        "end": "04:00",
        "tz": "Europe/Berlin",
    }


@pytest.mark.parametrize("text", ["", "maintenance:\n", "maintenance:\n  windows:\n"])
def test_no_windows_is_the_default(text: str) -> None:
    config, problems = parse_config(BASE + text, base_dir=Path("/"), environ={})
    assert problems == []
    assert config is not None
    assert config.maintenance.windows == ()


def test_windows_may_come_from_the_environment() -> None:
    config, problems = parse_config(
        BASE + 'maintenance:\n  windows:\n    - {start: "02:00", end: "03:00", tz: "${TZ}"}\n',
        base_dir=Path("/"),
        environ={"TZ": "Asia/Tokyo"},
    )
    assert problems == []
    assert config is not None
    assert config.maintenance.windows[0].tz == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            '{start: "02:00", end: "04:00", tz: Europe/Berln}',
            "config:5: error: maintenance.windows[0].tz: 'Europe/Berln' is not a known time "
            "zone; did you mean Europe/Berlin?",
        ),
        (
            '{start: "02:00", end: "04:00", tz: europe/berlin}',
            "config:5: error: maintenance.windows[0].tz: 'europe/berlin' is not a known time "
            "zone; did you mean Europe/Berlin?",
        ),
        (
            '{start: "02:00", end: "04:00", tz: /etc/localtime}',
            "config:5: error: maintenance.windows[0].tz: '/etc/localtime' is not a known time "
            "zone; use an IANA time zone name such as Europe/Berlin, America/New_York or UTC",
        ),
        (
            '{start: "02:00", end: "04:00"}',
            "config:5: error: maintenance.windows[0].tz: required key is missing; add tz: use "
            "an IANA time zone name such as Europe/Berlin, America/New_York or UTC",
        ),
        (
            '{start: 2:30, end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].start: YAML read the unquoted 2:30 as the "
            'number 150; quote it: start: "02:30"',
        ),
        (
            '{start: "02:00", end: "24:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].end: '24:00' is not a time of day; write "
            '"00:00": an end at or before the start is on the next day',
        ),
        (
            '{start: "2 am", end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].start: '2 am' is not a time of day; write "
            '"HH:MM" on a 24-hour clock, in quotes, e.g. "02:00"',
        ),
        (
            '{end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].start: required key is missing; add "
            'start: "HH:MM" (24-hour clock)',
        ),
        (
            '{days: sun, start: "02:00", end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].days: must be a list of days, not a "
            "string; write a list such as [sat, sun], or leave days out for every day",
        ),
        (
            '{days: [], start: "02:00", end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].days: is empty, so the window would never "
            "open; write a list such as [sat, sun], or leave days out for every day",
        ),
        (
            '{days: [sunn], start: "02:00", end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].days[0]: 'sunn' is not a day; did you "
            "mean sun?",
        ),
        (
            '{day: [sun], start: "02:00", end: "04:00", tz: UTC}',
            "config:5: error: maintenance.windows[0].day: unknown key; did you mean days?",
        ),
        (
            "sun 02:00-04:00",
            "config:5: error: maintenance.windows[0]: must be a mapping with start, end and tz "
            '(and days); write `- {days: [sun], start: "02:00", end: "04:00", tz: '
            "Europe/Berlin}`",
        ),
    ],
)
def test_each_problem_is_one_line_naming_the_item_and_the_fix(item: str, expected: str) -> None:
    config, problems = load(f"    - {item}\n")
    assert config is None
    assert problems == [expected]


def test_every_problem_of_every_item_is_reported_at_once_at_its_own_line() -> None:
    config, problems = load(
        '    - {start: "02:00", end: "04:00", tz: UTC}\n'
        "    - days: [sun]\n"
        "      start: 2:00\n"
        "      tz: Mars/Olympus\n"
    )
    assert config is None
    assert problems == [
        "config:7: error: maintenance.windows[1].start: YAML read the unquoted 2:00 as the "
        'number 120; quote it: start: "02:00"',
        "config:6: error: maintenance.windows[1].end: required key is missing; add end: "
        '"HH:MM" (24-hour clock)',
        "config:8: error: maintenance.windows[1].tz: 'Mars/Olympus' is not a known time zone; "
        "use an IANA time zone name such as Europe/Berlin, America/New_York or UTC",
    ]


def test_windows_that_are_not_a_list_and_a_misspelt_section_key() -> None:
    _, problems = load('    {start: "02:00"}\n')
    assert problems == [
        "config:4: error: maintenance.windows: must be a list of windows, not a mapping; write "
        '`- {days: [sun], start: "02:00", end: "04:00", tz: Europe/Berlin}`'
    ]
    _, misspelt = parse_config(
        BASE + "maintenance:\n  window: []\n", base_dir=Path("/"), environ={}
    )
    assert [problem.format() for problem in misspelt] == [
        "config:4: error: maintenance.window: unknown key; did you mean maintenance.windows?"
    ]
