"""The one writer of the supervisor's stdout (vLLM's echoed lines) and stderr (its records).

Two writers of one terminal glue lines together: a `print()` under PYTHONUNBUFFERED=1 is two
write(2) calls (the text, then the newline), and vLLM's output arrives in chunks that end
anywhere. Here every record and every batch of echoed lines is whole lines, written with one
os.write (repeated only for what a partial write left) under one lock shared by both streams,
so stdout and stderr pointing at one terminal or file never interleave inside a line.

Nothing written here may stop the supervisor: a closed stream (EBADF), a reader gone (EPIPE;
Python ignores SIGPIPE), a non-blocking stream that is full (EAGAIN) or a full disk drops the
write and counts it. A record waits for the lock only a moment: if the echo holds it, stuck on
a stdout nobody reads, the record is written without it (stderr may still be read) rather than
stall the event loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Protocol

from niodoo_supervisor.output.journal import PRIORITY, is_journal

__all__ = ["EchoTarget", "OutputWriter", "Stream"]

LOCK_WAIT = 0.5  # seconds a record waits for the echo to finish its write
_ECHO_PRIORITY = b"<6>"  # vLLM's lines in the journal: info, whatever a line itself begins with


class EchoTarget(Protocol):
    """Where the log pump sends vLLM's lines: whole lines only (`lines` ends with a newline)."""

    def echo(self, lines: bytes) -> None: ...


class Stream:
    """One file descriptor and what is known of it."""

    def __init__(self, fd: int, environ: Mapping[str, str]) -> None:
        self.fd = fd
        self.journal = is_journal(fd, environ)
        self.tty = os.isatty(fd)
        self.mid_line = False  # a failed write left a line unfinished: start the next afresh
        self.dropped_writes = 0
        self.dropped_bytes = 0

    def write(self, data: bytes) -> OSError | None:
        """Write all of `data`; on an error drop the rest, count it and return the error."""
        if self.mid_line:
            data = b"\n" + data
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError as exc:
                return self._dropped(view, len(data), exc)
            if written == 0:  # nothing taken and no error: do not spin
                return self._dropped(view, len(data), OSError("write took nothing"))
            view = view[written:]
        self.mid_line = False
        return None

    def _dropped(self, rest: memoryview, size: int, exc: OSError) -> OSError:
        self.dropped_writes += 1
        self.dropped_bytes += len(rest)
        self.mid_line = self.mid_line or len(rest) < size
        return exc


class OutputWriter:
    """Writes records (`record`) to `err_fd` and vLLM's lines (`echo`) to `out_fd`.

    Under the journal each record line starts with its level's syslog priority (`<3>`), and
    each echoed line with `<6>`: journald reads only the first prefix of a line, so a line a
    client made vLLM write cannot raise its own priority. On a terminal, ESC in echoed lines
    is shown as `\\x1b`: a client's text must not drive the terminal.
    """

    def __init__(
        self,
        out_fd: int = 1,
        err_fd: int = 2,
        *,
        environ: Mapping[str, str] | None = None,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        env = os.environ if environ is None else environ
        self.out = Stream(out_fd, env)
        self.err = Stream(err_fd, env)
        self._lock = threading.Lock()
        self._lock_wait = lock_wait
        self._lock_stuck = False
        self.unlocked_records = 0  # records written while the echo held the lock

    def record(self, line: str, level: str) -> None:
        """One rendered record (one line, no newline) at `level` (structlog's level name)."""
        text = line.replace("\n", "\\n")  # the renderers escape newlines; this is the guard
        if self.err.journal:
            text = f"<{PRIORITY.get(level, PRIORITY['info'])}>{text}"
        data = (text + "\n").encode("utf-8", "backslashreplace")
        # Once the lock was found stuck, do not wait again until it has been free once.
        locked = self._lock.acquire(timeout=0 if self._lock_stuck else self._lock_wait)
        self._lock_stuck = not locked
        if not locked:
            self.unlocked_records += 1
        try:
            self.err.write(data)
        finally:
            if locked:
                self._lock.release()

    def echo(self, lines: bytes) -> None:
        """vLLM's whole lines (`lines` ends with a newline). Raises the OSError of a failed
        write after counting it, so the echo sink reports the outage once."""
        if not lines:
            return
        if self.out.tty:
            lines = lines.replace(b"\x1b", b"\\x1b")
        if self.out.journal:
            lines = _ECHO_PRIORITY + lines[:-1].replace(b"\n", b"\n" + _ECHO_PRIORITY) + b"\n"
        with self._lock:
            error = self.out.write(lines)
        if error is not None:
            raise error

    @property
    def dropped_writes(self) -> int:
        return self.out.dropped_writes + self.err.dropped_writes
