"""The one writer of the supervisor's stdout (vLLM's echoed lines) and stderr (its records).

Two writers of one terminal glue lines together: a `print()` under PYTHONUNBUFFERED=1 is two
write(2) calls (the text, then the newline), and vLLM's output arrives in chunks that end
anywhere. Here every record, and every piece of echoed lines (about `ECHO_PIECE` bytes cut
after a newline; a longer line is one piece), is whole lines written with one os.write
(repeated only for what a partial write left) under one lock shared by both streams, so
stdout and stderr pointing at one terminal, file or pipe do not interleave inside a line
(but see a stuck echo, below).

What is guaranteed, and what is not:
- A failed write never raises into the supervisor's loop: a closed stream (EBADF), a reader
  gone (EPIPE; Python ignores SIGPIPE), a non-blocking stream that is full (EAGAIN) or a full
  disk drops the write and counts it. The echo raises after counting, for its sink to report.
- A record waits for the echo at most `LOCK_WAIT` seconds from when the echo's current piece
  began (the echo lets a waiting record go before its next piece). Past that, the echo is
  stuck on a stdout nobody reads: the record is written without the lock (stderr may still be
  read), on a fresh line when stdout and stderr are one file, and later records do not wait.
- A record itself blocks on a blocking stderr nobody reads, as any program's stderr would:
  the fds are inherited, shared with the shell, so they are not made non-blocking. The
  supervisor's loop then stops; under systemd the unit's watchdog (WatchdogSec=) restarts it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

from niodoo_supervisor.output.journal import PRIORITY, is_journal, journal_lines

__all__ = ["ECHO_PIECE", "LOCK_WAIT", "EchoTarget", "OutputWriter", "Stream"]

LOCK_WAIT = 0.5  # seconds a record waits for the echo's current piece
ECHO_PIECE = 64 * 1024  # bytes of echoed lines written under the lock at a time
_ECHO_PRIORITY = b"<6>"  # vLLM's lines in the journal: info, whatever a line itself begins with
# What a client's text must not send to a terminal: C0 controls but newline and tab, DEL, and
# the C1 controls in UTF-8 (`\xc2\x9b` is CSI, as ESC [).
_TTY_CONTROLS = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def _tty_escape(match: re.Match[bytes]) -> bytes:
    return b"\\x%02x" % match[0][-1]


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
    each echoed line with `<6>`; NUL is written as `\\x00` and a line longer than
    `journal.LINE_LIMIT` goes as pieces, each with the prefix: journald reads a prefix at each
    newline, NUL and LineMax, so a line a client made vLLM write cannot choose its priority.
    On a terminal, control characters in echoed lines are shown (`\\x1b`), not obeyed.
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
        self._one_file = _same_file(out_fd, err_fd)
        self._lock_wait = lock_wait
        # `_turn` guards the three fields below; the writes themselves happen outside it.
        self._turn = threading.Condition(threading.Lock())
        self._busy = False  # a write under the lock is in progress
        self._echo_since: float | None = None  # when the echo's current piece took the lock
        self._waiting = 0  # records waiting for the lock: the echo lets them go first
        self.unlocked_records = 0  # records written while the echo held the lock

    def record(self, line: str, level: str) -> None:
        """One rendered record (one line, no newline) at `level` (structlog's level name)."""
        data = (line.replace("\n", "\\n") + "\n").encode("utf-8", "backslashreplace")
        if self.err.journal:  # the renderers escape newlines; the replace above is the guard
            data = journal_lines(data, b"<%d>" % PRIORITY.get(level, PRIORITY["info"]))
        locked = self._take_for_record()
        if not locked:
            self.unlocked_records += 1
            if self._one_file:  # the echo may be inside a line: do not join it
                data = b"\n" + data
        try:
            self.err.write(data)
        finally:
            if locked:
                self._give_back()

    def echo(self, lines: bytes) -> None:
        """vLLM's whole lines (`lines` ends with a newline). Raises the OSError of a failed
        write after counting it, so the echo sink reports the outage once."""
        if not lines:
            return
        if self.out.tty:
            lines = _TTY_CONTROLS.sub(_tty_escape, lines)
        if self.out.journal:
            lines = journal_lines(lines, _ECHO_PRIORITY)
        for piece in _pieces(lines, ECHO_PIECE):
            self._take_for_echo()
            try:
                error = self.out.write(piece)
            finally:
                self._give_back()
            if error is not None:
                raise error

    @property
    def dropped_writes(self) -> int:
        return self.out.dropped_writes + self.err.dropped_writes

    def _take_for_record(self) -> bool:
        """Take the lock; False when the echo's piece (or another record) has held it past
        `lock_wait`: the record is then written without it."""
        asked = time.monotonic()
        with self._turn:
            self._waiting += 1
            try:
                while self._busy:
                    since = asked if self._echo_since is None else self._echo_since
                    left = since + self._lock_wait - time.monotonic()
                    if left <= 0:
                        return False
                    self._turn.wait(left)
                self._busy = True
                return True
            finally:
                self._waiting -= 1

    def _take_for_echo(self) -> None:
        with self._turn:
            while self._busy or self._waiting:
                self._turn.wait()
            self._busy = True
            self._echo_since = time.monotonic()

    def _give_back(self) -> None:
        with self._turn:
            self._busy = False
            self._echo_since = None
            self._turn.notify_all()


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    """`data` (whole lines) in pieces of about `size` bytes, each cut after a newline; a line
    longer than `size` is one piece."""
    start, end = 0, len(data)
    while end - start > size:
        cut = data.rfind(b"\n", start, start + size) + 1
        if cut == 0:
            cut = data.find(b"\n", start + size) + 1 or end
        yield data[start:cut]
        start = cut
    yield data[start:] if start else data


def _same_file(a: int, b: int) -> bool:
    try:
        first, second = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
