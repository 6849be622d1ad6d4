"""A local listener standing in for a head's port (the master port of `mp`, the Ray port),
for the tests of hosts that watch their head."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class HeadPort:
    """A local listener standing in for the head's port: accepts and hangs up until closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@contextlib.contextmanager
def head_port() -> Iterator[HeadPort]:
    head = HeadPort()
    try:
        yield head
    finally:
        head.close()
