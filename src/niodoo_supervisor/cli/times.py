"""Times as a person reads them: the clock time, and how long ago ("12:03:04, 5 min ago")."""

from __future__ import annotations

import math
from datetime import datetime

__all__ = ["ago", "at_and_ago", "duration"]


def duration(seconds: float) -> str:
    """42s, 5 min, 3 h 20 min, 2 days 4 h."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"


def ago(epoch: float, now: float) -> str:
    """How long before `now`; "in the future" for a clock that stepped back."""
    if epoch > now + 1:
        return "in the future (the clock changed?)"
    return f"{duration(now - epoch)} ago"


def at_and_ago(epoch: float, now: float) -> str:
    """ "12:03:04, 5 min ago"; the date too when it is not today. "unknown time" for a value
    that is no time (a damaged status file)."""
    if not math.isfinite(epoch) or not 0 < epoch < 1e11:
        return "unknown time"
    moment = datetime.fromtimestamp(epoch).astimezone()
    today = datetime.fromtimestamp(now).astimezone().date()
    clock = moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M:%S")
    return f"{clock}, {ago(epoch, now)}"
