"""Where the log pump's output goes: the rotating log file (`RotatingLogFile`), the sink
writer thread behind each sink's bounded queue (`_Sink`), and per-sink counters
(`SinkStats`).

Sinks never block the loop or the child: each sink (the rotating log file, the echo to
the journal) has its own writer thread behind a bounded queue. When a queue is full (slow
or full disk, slow journal) the chunk is dropped for that sink and counted, and once the
sink catches up one marker line says how much is missing. A write error (ENOSPC) is
counted and reported, and the pump keeps reading: a full disk must not stall vLLM.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from niodoo_supervisor.files.atomic import describe_os_error

__all__ = ["RotatingLogFile", "SinkStats"]

log = structlog.get_logger(__name__)

_MARK = b"[niodoo-supervisor]"


class RotatingLogFile:
    """An append-only file rotated by size: `path`, `path.1` ... `path.<backup_count>`.

    Rotation happens between lines when it can, so a line is not split across files.
    With `backup_count` 0 the file is truncated instead of rotated. One file serves the
    pumps of successive vLLM runs; a lock keeps a late writer thread of a stopped run from
    interleaving with the next run's writer or with `close`.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backup_count: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._fd = -1
        self._size = 0
        self._lock = threading.RLock()

    def write(self, data: bytes) -> None:
        """Write all of `data`, rotating first when it would not fit. Raises OSError
        (ENOSPC...), after which part of `data` may have been written."""
        with self._lock:
            self._write_locked(data)

    def _write_locked(self, data: bytes) -> None:
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
                self._rotate_locked()

    def _rotate_locked(self) -> None:
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
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a link planted at the log path is refused (ELOOP), never appended to.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]


class _Sink:
    """One sink's writer thread and bounded queue. `submit` never blocks. `finish` runs on the
    thread once everything is written at `close` (the echo's unfinished last line)."""

    def __init__(
        self,
        name: str,
        write: Callable[[bytes], None],
        max_pending: int,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._finish = finish
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
                    break
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
        if self._finish is not None:
            try:
                self._finish()
            except OSError as exc:
                self.write_errors += 1
                self.last_error = describe_os_error(exc)

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
            self.last_error = describe_os_error(exc)
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
