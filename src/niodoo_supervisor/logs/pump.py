"""Capture vLLM's output: read the pipe, find events, feed the log file and the journal.

vLLM's stdout and stderr are one pipe. The pump reads it in large chunks on the event
loop (`loop.add_reader` + `os.read`), scans each chunk with the rules (`EventScanner`:
C-speed anchor search, no per-line Python) and hands the chunk to its sinks.

vLLM's lines are echoed (the journal) through the one output writer, whole lines only: a
chunk's unfinished last line waits for its end (`output.echo_lines`).

Sinks (`sinks`) never block the loop or the child: each has its own writer thread
behind a bounded queue; a full queue drops the chunk for that sink (counted, and marked
in the output once the sink catches up), and a write error (ENOSPC) is counted and
reported while the pump keeps reading: a full disk must not stall vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.logs.rules import RuleSet, clip
from niodoo_supervisor.logs.sinks import RotatingLogFile, SinkStats, _Sink
from niodoo_supervisor.output.echo_lines import EchoLines
from niodoo_supervisor.output.writer import EchoTarget

__all__ = ["LogPump", "PumpStats"]

log = structlog.get_logger(__name__)

TAIL_LINE = 2000  # characters kept of each line of `LogPump.tail`


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
    cut_lines: int = 0  # lines longer than the rules' limit, cut before matching

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
        echo: EchoTarget | None,
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
            self._scanner.cut_lines,
        )

    def tail(self) -> list[str]:
        """The last `tail_lines` lines read (the unfinished last line included), each cut
        to TAIL_LINE characters: they go to crash reports in the status file."""
        text = b"".join(chunk for chunk, _ in self._tail).decode("utf-8", "replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [clip(line.rstrip("\r"), TAIL_LINE) for line in lines[-self._tail_lines :]]

    def mark_serving(self) -> None:
        """vLLM answered an HTTP request: from now on its lines may quote clients, so fatal
        lines are reported, not acted on (`EventScanner.serving`). A probe's answer says so
        even when an operator's logging config hides vLLM's own "server started" line."""
        self._scanner.serving = True

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
            echo, lines = self._echo, EchoLines()

            def write_echo(data: bytes) -> None:
                whole = lines.feed(data)  # whole lines only: never glued to a record
                if whole:
                    echo.echo(whole)

            def finish_echo() -> None:
                echo.echo(lines.end())  # the stream's last line, even without its newline

            self._sinks.append(_Sink("echo", write_echo, self._max_pending, finish_echo))

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
