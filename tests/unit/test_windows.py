"""Maintenance-window arithmetic: days, midnight, time zones and the DST days, then properties
that must hold for any windows and any instant."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from niodoo_supervisor.config.maintenance_sections import WEEKDAYS, Window
from niodoo_supervisor.supervise.windows import closes_at, is_open, next_opening

UTC = timezone.utc
SECOND = timedelta(seconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def window(start: str, end: str, tz: str = "UTC", days: str | None = "sun") -> Window:
    hour, minute = (int(part) for part in start.split(":"))
    end_hour, end_minute = (int(part) for part in end.split(":"))
    chosen = tuple(range(7)) if days is None else tuple(WEEKDAYS.index(d) for d in days.split())
    return Window(time(hour, minute), time(end_hour, end_minute), tz, chosen)


def within(low: datetime, high: datetime, fraction: float) -> datetime:
    """An instant in [low, high), whole seconds from `low` (float products round up to `high`)."""
    return low + timedelta(seconds=int((high - low).total_seconds() * fraction))


def opening(windows: list[Window], now: datetime) -> tuple[datetime | None, datetime | None]:
    opens = next_opening(windows, now)
    return opens, closes_at(windows, opens) if opens else None


# UTC, a weekly window: 2025-06-01 is a Sunday.
SUNDAY_2_TO_4 = [window("02:00", "04:00")]


def test_asked_from_inside_a_weekly_window_it_is_open_now_until_its_end() -> None:
    now = utc(2025, 6, 1, 3, 0)
    assert is_open(SUNDAY_2_TO_4, now)
    assert next_opening(SUNDAY_2_TO_4, now) == now
    assert closes_at(SUNDAY_2_TO_4, now) == utc(2025, 6, 1, 4, 0)


def test_just_before_the_start_it_is_closed_and_opens_at_the_start() -> None:
    now = utc(2025, 6, 1, 2, 0) - SECOND
    assert not is_open(SUNDAY_2_TO_4, now)
    assert next_opening(SUNDAY_2_TO_4, now) == utc(2025, 6, 1, 2, 0)
    assert closes_at(SUNDAY_2_TO_4, now) is None


def test_exactly_at_the_start_it_is_open_and_exactly_at_the_end_closed() -> None:
    assert is_open(SUNDAY_2_TO_4, utc(2025, 6, 1, 2, 0))
    end = utc(2025, 6, 1, 4, 0)
    assert not is_open(SUNDAY_2_TO_4, end)
    assert is_open(SUNDAY_2_TO_4, end - SECOND)
    assert next_opening(SUNDAY_2_TO_4, end) == utc(2025, 6, 8, 2, 0)  # a week later


def test_other_days_are_closed_and_without_days_every_day_opens() -> None:
    assert not is_open(SUNDAY_2_TO_4, utc(2025, 6, 2, 3, 0))  # Monday
    daily = [window("02:00", "04:00", days=None)]
    assert all(is_open(daily, utc(2025, 6, day, 3, 0)) for day in range(1, 8))
    assert next_opening(daily, utc(2025, 6, 2, 5, 0)) == utc(2025, 6, 3, 2, 0)


def test_epoch_seconds_are_the_same_instant_and_a_naive_datetime_is_refused() -> None:
    now = utc(2025, 6, 1, 1, 0)
    assert next_opening(SUNDAY_2_TO_4, now.timestamp()) == next_opening(SUNDAY_2_TO_4, now)
    assert is_open(SUNDAY_2_TO_4, utc(2025, 6, 1, 2, 0).timestamp())
    with pytest.raises(ValueError, match="aware"):
        is_open(SUNDAY_2_TO_4, datetime(2025, 6, 1, 3, 0))


def test_no_windows_means_any_time() -> None:
    now = utc(2025, 6, 1, 12, 0)
    assert is_open([], now)
    assert next_opening([], now) is None
    assert closes_at([], now) is None


def test_across_midnight_days_names_the_start_day_sunday_to_monday() -> None:
    late_sunday = [window("23:00", "01:00", days="sun")]
    assert is_open(late_sunday, utc(2025, 6, 1, 23, 30))  # Sunday night
    assert is_open(late_sunday, utc(2025, 6, 2, 0, 30))  # Monday morning, same opening
    assert closes_at(late_sunday, utc(2025, 6, 1, 23, 30)) == utc(2025, 6, 2, 1, 0)
    assert not is_open(late_sunday, utc(2025, 6, 1, 0, 30))  # Sunday morning: Saturday's
    assert not is_open(late_sunday, utc(2025, 6, 2, 23, 30))  # Monday night
    assert next_opening(late_sunday, utc(2025, 6, 2, 1, 0)) == utc(2025, 6, 8, 23, 0)


def test_start_equal_to_end_lasts_a_whole_day() -> None:
    all_sunday = [window("00:00", "00:00", days="sun")]
    assert opening(all_sunday, utc(2025, 5, 31, 12, 0)) == (
        utc(2025, 6, 1, 0, 0),
        utc(2025, 6, 2, 0, 0),
    )
    assert not is_open(all_sunday, utc(2025, 6, 2, 0, 0))


def test_overlapping_and_touching_windows_are_one_opening() -> None:
    windows = [
        window("01:00", "03:00", days="mon"),
        window("02:00", "05:00", days="mon"),
        window("05:00", "06:00", days=None),
    ]
    monday = utc(2025, 6, 2, 1, 30)
    assert closes_at(windows, monday) == utc(2025, 6, 2, 6, 0)
    assert is_open(windows, utc(2025, 6, 2, 4, 59))
    # Tuesday only the daily one.
    assert opening(windows, utc(2025, 6, 3, 0, 0)) == (utc(2025, 6, 3, 5), utc(2025, 6, 3, 6))
    # The earliest of several windows in different zones comes first.
    zones = [window("02:00", "03:00", "Europe/Berlin"), window("02:00", "03:00", "UTC")]
    assert next_opening(zones, utc(2025, 5, 31, 12)) == utc(2025, 6, 1, 0, 0)  # Berlin, CEST


def test_a_window_that_never_leaves_a_gap_never_closes() -> None:
    always = [window("00:00", "00:00", "Europe/Berlin", days=None)]
    for now in (utc(2025, 3, 30, 1, 0), utc(2025, 10, 26, 1, 30), utc(2025, 6, 1)):
        assert is_open(always, now)
        assert closes_at(always, now) is None


# Europe/Berlin jumps 02:00 CET -> 03:00 CEST on 2025-03-30 at 01:00 UTC.
BERLIN_SPRING_JUMP = utc(2025, 3, 30, 1, 0)


@pytest.mark.parametrize(
    ("start", "end", "opens", "closes"),
    [
        # Starts in the skipped hour: opens at the jump, shortened.
        ("02:30", "04:00", BERLIN_SPRING_JUMP, utc(2025, 3, 30, 2, 0)),
        # Skipped whole: opens at the jump for its written hour (03:00-04:00 CEST).
        ("02:00", "03:00", BERLIN_SPRING_JUMP, utc(2025, 3, 30, 2, 0)),
        ("02:15", "02:45", BERLIN_SPRING_JUMP, utc(2025, 3, 30, 1, 30)),
        # Ends in the skipped hour: closes at the jump.
        ("01:30", "02:30", utc(2025, 3, 30, 0, 30), BERLIN_SPRING_JUMP),
        # Untouched by the jump, on each side of it.
        ("00:00", "01:00", utc(2025, 3, 29, 23, 0), utc(2025, 3, 30, 0, 0)),
        ("04:00", "05:00", utc(2025, 3, 30, 2, 0), utc(2025, 3, 30, 3, 0)),
    ],
)
def test_berlin_spring_forward_last_sunday_of_march(
    start: str, end: str, opens: datetime, closes: datetime
) -> None:
    windows = [window(start, end, "Europe/Berlin")]
    assert opening(windows, utc(2025, 3, 29, 12, 0)) == (opens, closes)
    assert not is_open(windows, opens - SECOND)


def test_berlin_the_sunday_after_the_jump_is_a_plain_cest_window() -> None:
    windows = [window("02:00", "03:00", "Europe/Berlin")]
    assert opening(windows, utc(2025, 3, 31)) == (utc(2025, 4, 6, 0, 0), utc(2025, 4, 6, 1, 0))


# Europe/Berlin falls back 03:00 CEST -> 02:00 CET on 2025-10-26 at 01:00 UTC: 02:00-03:00
# shows twice, first 00:00-01:00 UTC, then 01:00-02:00 UTC.
@pytest.mark.parametrize(
    ("start", "end", "opens", "closes"),
    [
        # Inside the repeated hour: its first pass only.
        ("02:15", "02:45", utc(2025, 10, 26, 0, 15), utc(2025, 10, 26, 0, 45)),
        # Spanning it: the two hours that really pass between the readings.
        ("02:30", "03:30", utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 2, 30)),
        ("02:00", "03:00", utc(2025, 10, 26, 0, 0), utc(2025, 10, 26, 2, 0)),
        # Ending in it: at the first pass.
        ("01:30", "02:30", utc(2025, 10, 25, 23, 30), utc(2025, 10, 26, 0, 30)),
    ],
)
def test_berlin_fall_back_last_sunday_of_october_opens_once(
    start: str, end: str, opens: datetime, closes: datetime
) -> None:
    windows = [window(start, end, "Europe/Berlin")]
    assert opening(windows, utc(2025, 10, 25, 12, 0)) == (opens, closes)
    # After it closes, the clock shows the start again (second pass) but nothing reopens.
    assert next_opening(windows, closes) == opens + timedelta(days=7, hours=1)


def test_new_york_dst_days() -> None:
    # 2025-03-09: 02:00 EST -> 03:00 EDT at 07:00 UTC; 2025-11-02: 02:00 EDT -> 01:00 EST at
    # 06:00 UTC (01:00-02:00 shows twice).
    skipped = [window("02:00", "03:00", "America/New_York")]
    assert opening(skipped, utc(2025, 3, 8)) == (utc(2025, 3, 9, 7), utc(2025, 3, 9, 8))
    repeated = [window("01:30", "02:30", "America/New_York")]
    assert opening(repeated, utc(2025, 11, 1)) == (
        utc(2025, 11, 2, 5, 30),  # 01:30 EDT, the first pass
        utc(2025, 11, 2, 7, 30),  # 02:30 EST
    )
    assert not is_open(repeated, utc(2025, 11, 2, 7, 30))
    summer = [window("02:00", "04:00", "America/New_York", days="sun")]
    assert opening(summer, utc(2025, 6, 1)) == (utc(2025, 6, 1, 6), utc(2025, 6, 1, 8))


ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Santiago",  # changes at midnight (00:00 is skipped)
    "Asia/Kolkata",
    "Pacific/Apia",  # skipped the whole of 2011-12-30
]
# Instants near DST changes of those zones, and anywhere in 2000-2037.
TRANSITIONS = [
    utc(2025, 3, 30, 1),
    utc(2025, 10, 26, 1),
    utc(2025, 3, 9, 7),
    utc(2025, 11, 2, 6),
    utc(2025, 4, 5, 15),
    utc(2025, 9, 7, 4),
    utc(2011, 12, 30, 10),
]

clock_times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))
windows_strategy = st.lists(
    st.builds(
        Window,
        clock_times,
        clock_times,
        st.sampled_from(ZONES),
        st.sets(st.integers(0, 6), min_size=1).map(lambda days: tuple(sorted(days))),
    ),
    min_size=1,
    max_size=3,
)
instants = st.one_of(
    st.integers(int(utc(2000, 1, 1).timestamp()), int(utc(2037, 1, 1).timestamp())).map(
        lambda seconds: datetime.fromtimestamp(seconds, UTC)
    ),
    st.builds(
        lambda base, shift: base + timedelta(seconds=shift),
        st.sampled_from(TRANSITIONS),
        st.integers(-8 * 86400, 8 * 86400),
    ),
)


@settings(max_examples=300, deadline=None)
@given(windows_strategy, instants, st.floats(0, 1, exclude_max=True))
def test_next_opening_is_the_first_open_instant(
    windows: list[Window], now: datetime, fraction: float
) -> None:
    opens = next_opening(windows, now)
    assert opens is not None
    assert now <= opens < now + timedelta(days=8)
    assert is_open(windows, opens)
    assert (opens == now) == is_open(windows, now)
    if opens > now:
        assert not is_open(windows, opens - SECOND)
        assert not is_open(windows, within(now, opens, fraction))


@settings(max_examples=300, deadline=None)
@given(windows_strategy, instants, st.floats(0, 1, exclude_max=True))
def test_an_open_window_stays_open_until_closes_at(
    windows: list[Window], now: datetime, fraction: float
) -> None:
    opens = next_opening(windows, now)
    assert opens is not None
    closes = closes_at(windows, opens)
    if closes is None:  # never closes: open a week on
        assert is_open(windows, opens + timedelta(days=7))
        return
    assert closes > opens
    assert not is_open(windows, closes)
    assert is_open(windows, closes - SECOND)
    assert is_open(windows, within(opens, closes, fraction))


@settings(max_examples=200, deadline=None)
@given(clock_times, clock_times, st.integers(0, 6), instants)
def test_in_utc_an_opening_lasts_its_written_length(
    start: time, end: time, day: int, now: datetime
) -> None:
    windows = [Window(start, end, "UTC", (day,))]
    opens = next_opening(windows, now)
    assert opens is not None
    if opens == now:  # asked from inside: the opening began earlier
        return
    written = (datetime.combine(opens.date(), end) - datetime.combine(opens.date(), start)) % (
        timedelta(days=1)
    ) or timedelta(days=1)
    assert opens.weekday() == day
    assert closes_at(windows, opens) == opens + written
