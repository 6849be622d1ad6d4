"""systemd notifications (sd_notify) that never block and never raise.

The protocol (sd_notify(3), which systemd documents as stable): one datagram of
newline-separated `KEY=VALUE` lines sent to the AF_UNIX socket named by `$NOTIFY_SOCKET`; a
name starting with `@` lies in the abstract namespace. The socket here is non-blocking: when
the receiver does not drain its queue (a busy or wedged PID 1, a test harness) a notification
is dropped and counted instead of stalling the supervisor's loop, as a blocking `send` would
for as long as nobody reads. Silent when `$NOTIFY_SOCKET` is unset.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Protocol

import structlog

from niodoo_supervisor.files.atomic import describe_os_error

__all__ = ["Notifier", "SystemdNotifier"]

log = structlog.get_logger("niodoo_supervisor")


class Notifier(Protocol):
    @property
    def dropped(self) -> int:
        """Notifications that could not be sent (the status shows it)."""
        ...

    def send(self, *fields: str) -> None: ...


class SystemdNotifier:
    """Sends to `address` (default: `$NOTIFY_SOCKET`). A failed send is counted in `dropped`;
    the first of a run of failures is logged, and so is the recovery."""

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET", "")
        self.dropped = 0
        self._address = _socket_address(address)
        self._shown = address
        self._failing = False
        self._sock: socket.socket | None = None
        if self._address is None:
            if address:
                log.warning("notify_socket_unsupported", socket=address)
            return
        try:
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
        except OSError as exc:
            log.warning("notify_socket_unusable", socket=address, error=str(exc))

    def send(self, *fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        data = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            self._sock.sendto(data, self._address)
        except OSError as exc:
            self.dropped += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "notify_dropped",
                    socket=self._shown,
                    error=describe_os_error(exc),
                    reason="systemd's notify socket takes nothing now; notifications are dropped and counted, never waited for",
                )
            return
        if self._failing:
            self._failing = False
            log.info("notify_recovered", socket=self._shown, dropped=self.dropped)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(name: str) -> str | None:
    """The address to send to: an absolute path, or `@name` as an abstract address."""
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # unset, or a kind this notifier does not speak (vsock:...)


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
