"""systemd notifications: a real datagram socket plays systemd's part; a send never blocks."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from niodoo_supervisor.supervise.systemd import SystemdNotifier


@contextlib.contextmanager
def _receiver(address: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def _fill(address: str) -> int:
    """Queue datagrams until the receiver's queue is full, as when nobody reads it."""
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                filler.sendto(b"FILLER=1", address)
                sent += 1
    return sent


def test_a_full_notify_socket_drops_and_counts_instead_of_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as receiver:
        assert _fill(path) > 0
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        notifier = SystemdNotifier()
        # A send that blocks would keep this thread alive: the supervisor's loop would be stuck.

        def send_three() -> None:
            for _ in range(3):
                notifier.send("WATCHDOG=1")

        sender = threading.Thread(target=send_three, daemon=True)
        sender.start()
        sender.join(timeout=5)
        assert not sender.is_alive(), "send blocked on a notify socket nobody reads"
        assert notifier.dropped == 3
        receiver.recv(64)  # room for one: the next notification goes through
        notifier.send("READY=1", "STATUS=ok")
        assert notifier.dropped == 3
        while (data := receiver.recv(64)) == b"FILLER=1":
            pass
        assert data == b"READY=1\nSTATUS=ok"


def test_a_run_of_drops_is_logged_once_and_the_recovery_too(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as receiver, capture_logs() as logs:
        _fill(path)
        notifier = SystemdNotifier(path)
        for _ in range(5):
            notifier.send("WATCHDOG=1")
        receiver.recv(64)
        notifier.send("WATCHDOG=1")
    events = [entry["event"] for entry in logs]
    assert events == ["notify_dropped", "notify_recovered"]
    assert logs[0]["socket"] == path and "Resource temporarily unavailable" in logs[0]["error"]
    assert logs[1]["dropped"] == 5


def test_an_abstract_socket_address_is_reached() -> None:
    name = f"niodoo-test-{os.getpid()}"
    with _receiver("\0" + name) as receiver:
        SystemdNotifier("@" + name).send("READY=1")
        assert receiver.recv(64) == b"READY=1"


@pytest.mark.parametrize("address", ["", "relative.sock", "vsock:2:1234", "@"])
def test_no_or_an_unsupported_socket_is_silent(address: str) -> None:
    notifier = SystemdNotifier(address)
    notifier.send("READY=1")
    assert notifier.dropped == 0


def test_a_socket_that_is_gone_counts_a_drop_and_never_raises(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "absent.sock"))
    notifier.send("STATUS=\udcff not UTF-8")  # a lone surrogate is replaced, not an error
    assert notifier.dropped == 1
