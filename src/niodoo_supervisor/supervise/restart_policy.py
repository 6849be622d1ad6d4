"""Restart policy: exponential backoff with jitter, a reset after a healthy stretch, and a
crash-loop limit. Pure: the caller passes the time and the random source. The settings are the
config's `supervisor.restart` section itself, so its defaults are declared once."""

from __future__ import annotations

import random
from collections import deque

from niodoo_supervisor.config.supervisor_sections import RestartSection

__all__ = ["RestartPolicy"]


class RestartPolicy:
    def __init__(self, settings: RestartSection, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.failures = 0  # consecutive, since the last reset
        self.starts: deque[float] = deque()

    def record_start(self, now: float) -> None:
        self.starts.append(now)
        while self.starts and self.starts[0] < now - self.settings.window:
            self.starts.popleft()

    def crash_loop(self, now: float) -> bool:
        """True when another start would exceed max_starts within the window."""
        recent = [start for start in self.starts if start >= now - self.settings.window]
        return len(recent) >= self.settings.max_starts

    def record_ready_for(self, seconds: float) -> None:
        """vLLM stayed ready `seconds`; long enough and the backoff starts over."""
        if seconds >= self.settings.reset_after:
            self.failures = 0
            self.starts.clear()

    def next_delay(self) -> float:
        """The delay before the next start after one more failure."""
        settings = self.settings
        base = min(settings.max_delay, settings.initial_delay * settings.factor**self.failures)
        self.failures += 1
        spread = base * settings.jitter
        return max(0.0, base + self.rng.uniform(-spread, spread))
