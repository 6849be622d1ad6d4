"""systemd notifications (sd_notify). Silent when NOTIFY_SOCKET is unset; never raises."""

from __future__ import annotations

import time
from typing import Protocol

import sdnotify

__all__ = ["Notifier", "SystemdNotifier"]


class Notifier(Protocol):
    def send(self, *fields: str) -> None: ...


class SystemdNotifier:
    """Sends `KEY=VALUE` lines to $NOTIFY_SOCKET through the `sdnotify` package, which swallows
    socket errors: a notification must never take the supervisor down."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()

    def send(self, *fields: str) -> None:
        self._notifier.notify("\n".join(fields))


def ready(status: str) -> tuple[str, ...]:
    return ("READY=1", f"STATUS={status}")


def status(text: str) -> tuple[str, ...]:
    return (f"STATUS={text}",)


def extend_timeout(seconds: float) -> tuple[str, ...]:
    return (f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}",)


def stopping(text: str) -> tuple[str, ...]:
    return ("STOPPING=1", f"STATUS={text}")


def reloading(text: str) -> tuple[str, ...]:
    # MONOTONIC_USEC lets Type=notify-reload units match the reload with its READY=1.
    return (
        "RELOADING=1",
        f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
        f"STATUS={text}",
    )


WATCHDOG = ("WATCHDOG=1",)
