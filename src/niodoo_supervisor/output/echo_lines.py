"""vLLM's output cut into whole lines for the echo: a chunk ends anywhere, so what follows its
last newline waits for the next chunk (or the stream's end) before it is written.

The cut is one `rfind` per chunk, never a walk over lines in Python: the echo keeps the pump's
speed. A line that never ends (a progress bar redrawn with `\\r`, a client's huge text) is
written out once its unfinished part reaches `limit`, newline added, so memory stays bounded.
"""

from __future__ import annotations

__all__ = ["PARTIAL_LIMIT", "EchoLines"]

PARTIAL_LIMIT = 64 * 1024


class EchoLines:
    """One stream's unfinished line; `feed` returns what is ready to write."""

    def __init__(self, limit: int = PARTIAL_LIMIT) -> None:
        self._limit = limit
        self._partial = bytearray()  # grown in place: tiny chunks do not copy it each time

    def feed(self, chunk: bytes) -> bytes:
        """The whole lines `chunk` completes (empty if none); keeps its unfinished end."""
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            self._partial += chunk
            return self._overlong()
        whole = bytes(self._partial) + chunk[:cut] if self._partial else chunk[:cut]
        self._partial[:] = chunk[cut:]
        return whole + self._overlong()

    def end(self) -> bytes:
        """The stream ended: its unfinished line, newline added (empty if none)."""
        rest = bytes(self._partial)
        self._partial.clear()
        return rest + b"\n" if rest else b""

    def _overlong(self) -> bytes:
        if len(self._partial) < self._limit:
            return b""
        return self.end()
