"""Capture vLLM's output: read the pipe, find events, feed the log file and the journal.

vLLM's stdout and stderr are one pipe. The pump reads it in large chunks on the event
loop (`loop.add_reader` + `os.read`), scans each chunk with the rules (`EventScanner`:
C-speed anchor search, no per-line Python) and hands the chunk to its sinks.

Sinks never block the loop or the child: each sink (the rotating log file, the echo to
the journal) has its own writer thread behind a bounded queue. When a queue is full (slow
or full disk, slow journal) the chunk is dropped for that sink and counted, and once the
sink catches up one marker line says how much is missing. A write error (ENOSPC) is
counted and reported, and the pump keeps reading: a full disk must not stall vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from niodoo_supervisor.rules import Event, RuleSet

__all__ = ["LogPump", "PumpStats", "RotatingLogFile", "SinkStats"]

log = structlog.get_logger(__name__)

_MARK = b"[niodoo-supervisor]"


class RotatingLogFile:
    """An append-only file rotated by size: `path`, `path.1` ... `path.<backup_count>`.

    Rotation happens between lines when it can, so a line is not split across files.
    With `backup_count` 0 the file is truncated instead of rotated. Not thread-safe: one
    writer (a pump's writer thread) at a time.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backup_count: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._fd = -1
        self._size = 0

    def write(self, data: bytes) -> None:
        """Write all of `data`, rotating first when it would not fit. Raises OSError
        (ENOSPC...), after which part of `data` may have been written."""
        if self._fd < 0:
            self._open()
        while data:
            room = self.max_bytes - self._size
            if self.max_bytes <= 0 or len(data) <= room:
                self._write_all(data)
                return
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1
            if cut == 0 and self._size == 0:
                # A line longer than the whole file: it gets a file of its own.
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._write_all(data[:cut])
                data = data[cut:]
            if data:
                self.rotate()

    def rotate(self) -> None:
        self.close()
        if self.backup_count > 0:
            for n in range(self.backup_count - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{n}")
                if src.exists():
                    src.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            if self.path.exists():
                self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]


class _Sink:
    """One sink's writer thread and bounded queue. `submit` never blocks."""

    def __init__(self, name: str, write: Callable[[bytes], None], max_pending: int) -> None:
        self.name = name
        self._write = write
        self._max_pending = max_pending
        self._queue: deque[bytes | int] = deque()  # data, or an int: a gap of so many bytes
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = False
        self._dropping = False
        self._gap = 0  # bytes dropped since the last accepted chunk
        self._accepted_at_line_end = True
        self._dropped_at_line_end = True
        self._last_byte = b"\n"
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self.lost_bytes = 0  # accepted but not written (write errors)
        self.write_errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"logpump-{name}", daemon=True)
        self._thread.start()

    def submit(self, data: bytes) -> None:
        with self._cond:
            if self._dropping and self._pending <= self._max_pending // 2:
                # Caught up: resume at the next line start, so the sink gets whole lines.
                cut = 0 if self._dropped_at_line_end else data.find(b"\n") + 1
                if self._dropped_at_line_end or cut:
                    self._drop(data[:cut])
                    data = data[cut:]
                    self._dropping = False
                    self._end_gap()
            elif self._pending and self._pending + len(data) > self._max_pending:
                # (An empty queue takes any chunk: a big read alone is no reason to drop.)
                self._dropping = True
                if not self._accepted_at_line_end:
                    cut = data.find(b"\n") + 1  # finish the line already half out
                    self._accept(data[:cut])
                    data = data[cut:]
            if self._dropping:
                self._drop(data)
            else:
                self._accept(data)
            self._cond.notify()

    def _accept(self, data: bytes) -> None:
        if data:
            self._queue.append(data)
            self._pending += len(data)
            self._accepted_at_line_end = data.endswith(b"\n")

    def _drop(self, data: bytes) -> None:
        if not data:
            return
        self.dropped_bytes += len(data)
        self.dropped_lines += data.count(b"\n")
        self._dropped_at_line_end = data.endswith(b"\n")
        self._gap += len(data)

    def _end_gap(self) -> None:
        # The marker is queued when the gap is over, so one marker tells the whole gap.
        if self._gap:
            self._queue.append(self._gap)
            self._gap = 0

    def close(self, timeout: float) -> bool:
        """Drain and stop; False if the sink is stuck past `timeout` (thread left behind)."""
        with self._cond:
            self._closing = True
            self._end_gap()
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                items = list(self._queue)
                self._queue.clear()
            for item in _batches(items):
                if isinstance(item, int):
                    # The marker goes exactly where the output is missing.
                    gap = f" dropped {item} bytes of vLLM output: log sink too slow\n"
                    self._emit(self._line_start() + _MARK + gap.encode())
                    continue
                self._emit(item)
                with self._cond:
                    self._pending -= len(item)

    def _line_start(self) -> bytes:
        return b"" if self._last_byte == b"\n" else b"\n"

    def _emit(self, data: bytes) -> None:
        if self.lost_bytes and self.last_error is not None:
            note = f" lost {self.lost_bytes} bytes of vLLM output: {self.last_error}\n"
            try:
                self._write(self._line_start() + _MARK + note.encode())
            except OSError:
                self.lost_bytes += len(data)
                return
            log.warning("log_sink_recovered", sink=self.name, lost_bytes=self.lost_bytes)
            self.lost_bytes, self._last_byte = 0, b"\n"
        try:
            self._write(data)
        except OSError as exc:
            # ENOSPC and friends: count, report once per outage, keep going.
            if not self.lost_bytes:
                log.error("log_sink_error", sink=self.name, error=str(exc), errno=exc.errno)
            self.write_errors += 1
            self.lost_bytes += len(data)
            self.last_error = os.strerror(exc.errno) if exc.errno else str(exc)
        else:
            if data:
                self._last_byte = data[-1:]


def _batches(items: list[bytes | int]) -> list[bytes | int]:
    # Join neighbouring chunks: one write per wake-up instead of one per chunk.
    out: list[bytes | int] = []
    run: list[bytes] = []
    for item in items:
        if isinstance(item, int):
            if run:
                out.append(b"".join(run))
                run = []
            out.append(item)
        else:
            run.append(item)
    if run:
        out.append(b"".join(run))
    return out


@dataclass(frozen=True, slots=True)
class SinkStats:
    name: str
    dropped_bytes: int
    dropped_lines: int
    write_errors: int
    lost_bytes: int


@dataclass(frozen=True, slots=True)
class PumpStats:
    """Counters since the pump started; the sink figures are summed over the sinks."""

    bytes: int
    lines: int
    events: int
    dropped_bytes: int
    dropped_lines: int
    write_errors: int
    lost_bytes: int
    last_output_monotonic: float | None
    sinks: tuple[SinkStats, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogPump:
    """Read `fd` (vLLM's stdout+stderr) until EOF; see the module docstring.

    The caller owns `fd` and `log_file` (one file serves successive pumps). `on_event` is
    called on the loop for every event; it must not block. `tail()` gives the last
    `tail_lines` lines for crash reports.
    """

    def __init__(
        self,
        fd: int,
        *,
        ruleset: RuleSet,
        on_event: Callable[[Event], None],
        log_file: RotatingLogFile | None,
        echo: BinaryIO | None,
        tail_lines: int = 200,
        read_size: int = 1 << 16,
        max_pending: int = 16 << 20,
        flush_delay: float = 0.1,
        close_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fd = fd
        self._scanner = ruleset.scanner()
        self._on_event = on_event
        self._log_file = log_file
        self._echo = echo
        self._tail_lines = tail_lines
        self._read_size = read_size
        self._max_pending = max_pending
        self._flush_delay = flush_delay
        self._close_timeout = close_timeout
        self._clock = clock
        self._sinks: list[_Sink] = []
        self._tail: deque[tuple[bytes, int]] = deque()  # chunks and their newline counts
        self._tail_newlines = 0
        self._tail_bytes = 0
        self._idle: asyncio.TimerHandle | None = None
        self._bytes = 0
        self._lines = 0
        self._events = 0
        self.last_output_monotonic: float | None = None

    @property
    def stats(self) -> PumpStats:
        sinks = tuple(
            SinkStats(s.name, s.dropped_bytes, s.dropped_lines, s.write_errors, s.lost_bytes)
            for s in self._sinks
        )
        return PumpStats(
            self._bytes,
            self._lines,
            self._events,
            sum(s.dropped_bytes for s in sinks),
            sum(s.dropped_lines for s in sinks),
            sum(s.write_errors for s in sinks),
            sum(s.lost_bytes for s in sinks),
            self.last_output_monotonic,
            sinks,
        )

    def tail(self) -> list[str]:
        """The last `tail_lines` lines read (the unfinished last line included)."""
        text = b"".join(chunk for chunk, _ in self._tail).decode("utf-8", "replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line.rstrip("\r") for line in lines[-self._tail_lines :]]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(self._fd, False)
        _grow_pipe(self._fd)
        self._start_sinks()
        try:
            loop.add_reader(self._fd, self._on_readable, loop, done)
            await done
        finally:
            loop.remove_reader(self._fd)
            if self._idle is not None:
                self._idle.cancel()
            self._dispatch(self._scanner.flush(final=True))
            await self._close_sinks()

    def _start_sinks(self) -> None:
        if self._log_file is not None:
            self._sinks.append(_Sink("file", self._log_file.write, self._max_pending))
        if self._echo is not None:
            echo = self._echo

            def write_echo(data: bytes) -> None:
                echo.write(data)
                echo.flush()

            self._sinks.append(_Sink("echo", write_echo, self._max_pending))

    async def _close_sinks(self) -> None:
        for sink in self._sinks:
            # A sink stuck on a dead journal must not hang the supervisor's stop.
            if not await asyncio.to_thread(sink.close, self._close_timeout):
                log.error("log_sink_stuck", sink=sink.name)

    def _on_readable(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        chunks: list[bytes] = []
        eof = False
        # Drain what is there (up to 16 reads) so each scan and hand-off covers a big chunk.
        for _ in range(16):
            try:
                data = os.read(self._fd, self._read_size)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: a pty's EOF
                    log.error("log_pump_read_error", error=str(exc))
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            if len(data) < self._read_size:
                break
        if chunks:
            self._take(b"".join(chunks), loop)
        if eof:
            loop.remove_reader(self._fd)
            if not done.done():
                done.set_result(None)

    def _take(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        newlines = data.count(b"\n")
        self._bytes += len(data)
        self._lines += newlines
        self.last_output_monotonic = self._clock()
        for sink in self._sinks:
            sink.submit(data)
        self._remember(data, newlines)
        self._dispatch(self._scanner.feed(data))
        if self._scanner.pending and self._idle is None:
            # An event waits for its record's next line; do not wait for it forever.
            self._idle = loop.call_later(self._flush_delay, self._flush_idle)

    def _flush_idle(self) -> None:
        self._idle = None
        self._dispatch(self._scanner.flush())

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            self._events += 1
            try:
                self._on_event(event)
            except Exception:
                log.exception("log_event_handler_failed", rule=event.rule)

    def _remember(self, data: bytes, newlines: int) -> None:
        # Keep whole chunks; split into lines only when tail() is asked for. Drop the oldest
        # chunk while the rest still holds the last tail_lines lines, or is too big.
        self._tail.append((data, newlines))
        self._tail_newlines += newlines
        self._tail_bytes += len(data)
        limit = max(self._tail_lines, 1) * 4096
        while len(self._tail) > 1:
            oldest, count = self._tail[0]
            rest = self._tail_bytes - len(oldest)
            if self._tail_newlines - count < self._tail_lines and rest < limit:
                break
            self._tail.popleft()
            self._tail_newlines -= count
            self._tail_bytes -= len(oldest)


def _grow_pipe(fd: int) -> None:
    # A bigger pipe (Linux) means fewer wake-ups and reads per MB, and more slack for vLLM.
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
