"""When maintenance windows are open: pure arithmetic on the configured `Window`s, with `now`
passed in (an aware datetime or epoch seconds). Answers are aware datetimes in UTC.

The rules (docs/configuration.md says the same for operators):

- No windows: any time. `is_open` is always true; `next_opening` and `closes_at` are None
  (there is nothing to wait for and nothing that closes).
- An opening starts on each listed day (every day without `days`) at `start` on the clock of
  the window's zone and ends at `end`: on the same day when `end` is later, on the next day
  when it is at or before `start` (so `days` names the day an opening starts; `start` = `end`
  lasts a whole day). An opening includes its start and excludes its end: [start, end).
- A clock time names the first instant of its day at which the zone's clock shows that time
  or later. So where clocks jump forward (Europe/Berlin, last Sunday of March, 02:00 -> 03:00),
  a time in the skipped hour means the jump: 02:30-04:00 opens at 03:00 and lasts an hour.
  Where they fall back (last Sunday of October, 03:00 -> 02:00), a time in the repeated hour
  means its first pass: an opening opens once; 02:15-02:45 lasts its 30 minutes, 02:30-03:30
  lasts the two hours that really pass between the two readings.
- An opening the jump skips whole (02:00-03:00 on that Sunday in Berlin, a common window on
  the very day Europe changes) would be empty: it opens at the jump instead and lasts its
  written length (03:00-04:00), so a pending restart does not wait a whole week.
- Openings that overlap or touch count as one: `closes_at` is the end of their union.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from niodoo_supervisor.config.maintenance_sections import Window

__all__ = ["closes_at", "is_open", "next_opening", "summary"]

_UTC = timezone.utc
_DAY = timedelta(days=1)
# An opening lasts at most a day (plus an hour of DST), so the ones that can hold `now` started
# on one of the two days before the zone's date of `now`, or on that date.
_DAYS_BACK = 2
# Every window opens at least once a week: the next opening starts within 8 days.
_HORIZON = timedelta(days=8)

Instant = datetime | float


def is_open(windows: Sequence[Window], now: Instant) -> bool:
    """Whether a restart may happen at `now`: inside an opening, or no windows at all."""
    at = _utc(now)
    return not windows or any(
        opens <= at < closes for opens, closes in _openings(windows, at, days_ahead=0)
    )


def next_opening(windows: Sequence[Window], now: Instant) -> datetime | None:
    """The first instant at or after `now` at which a window is open: `now` itself when one
    is open. None when there are no windows (any time)."""
    if not windows:
        return None
    at = _utc(now)
    return min(
        max(opens, at)
        for opens, closes in _openings(windows, at, days_ahead=_HORIZON.days)
        if closes > at
    )


def closes_at(windows: Sequence[Window], now: Instant) -> datetime | None:
    """When the opening that holds `now` ends (overlapping and touching openings joined).
    None when no window is open at `now`, when there are no windows, or when the windows
    leave no gap at all (`start` = `end` every day) and so never close."""
    at = _utc(now)
    if not windows or not is_open(windows, at):
        return None
    end = at
    for opens, closes in sorted(_openings(windows, at, days_ahead=_HORIZON.days + 1)):
        if opens > end:
            break
        end = max(end, closes)
    return end if end - at < _HORIZON else None


def _utc(now: Instant) -> datetime:
    if isinstance(now, datetime):
        if now.utcoffset() is None:
            raise ValueError(f"now must be an aware datetime, not {now!r}")
        return now.astimezone(_UTC)
    return datetime.fromtimestamp(now, _UTC)


def _openings(
    windows: Sequence[Window], now: datetime, *, days_ahead: int
) -> Iterator[tuple[datetime, datetime]]:
    """Every (opens, closes) of `windows` that starts on a day from two days before the
    zone's date of `now` to `days_ahead` days after it."""
    for window in windows:
        zone = window.zone
        today = now.astimezone(zone).date()
        for offset in range(-_DAYS_BACK, days_ahead + 1):
            day = today + offset * _DAY
            if day.weekday() in window.days:
                yield _opening(window, zone, day)


def _opening(window: Window, zone: ZoneInfo, day: date) -> tuple[datetime, datetime]:
    end_day = day if window.end > window.start else day + _DAY
    opens = _first_reading(day, window.start, zone)
    closes = _first_reading(end_day, window.end, zone)
    if closes == opens:  # skipped whole by a jump forward: it keeps its written length
        written = datetime.combine(end_day, window.end) - datetime.combine(day, window.start)
        closes = opens + written
    return opens, closes


def _first_reading(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """The first instant of `day` at which the clock of `zone` shows `clock` or later."""
    # fold=0: a time the clocks show twice means its first pass.
    local = datetime.combine(day, clock, tzinfo=zone)
    instant = local.astimezone(_UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    # The clocks skip `clock`. Read with the offset after the jump (fold=1) it is an instant
    # before the jump; with the one before (fold=0), an instant after it.
    return _jump(local.replace(fold=1).astimezone(_UTC), instant, zone)


def _jump(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant in (before, after] at which `zone`'s offset changes: tz transitions fall on
    whole seconds, so a bisection over whole seconds finds it exactly."""
    offset = before.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, _UTC)


def summary(windows: Sequence[Window], now: float) -> dict[str, object] | None:
    """For the status: whether a window is open at `now` (epoch) and when the next opens;
    None when no windows are configured."""
    opening = next_opening(windows, now)
    if opening is None:
        return None
    return {
        "open_now": is_open(windows, now),
        "next_opening": opening.isoformat(),
        "next_opening_epoch": opening.timestamp(),
    }
