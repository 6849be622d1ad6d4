"""Find the records of a byte stream that hold an anchor text, parsing only around the
hits (`ChunkScanner`, which reports each as a `HitRecord`). Records are grouped by
`logline.continuation`, as `logparse.RecordAssembler` groups them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import NamedTuple

from niodoo_supervisor.logline import (
    LogRecord,
    ParsedLine,
    _in_traceback_after,
    _indented,
    _record,
    _starts_traceback,
    continuation,
    continues,
    split_line,
)

__all__ = ["ChunkScanner", "HitRecord"]


class HitRecord(NamedTuple):
    """A record holding at least one anchor hit, found by `ChunkScanner`.

    `hit_lines` index `record.lines`; `hits` are those lines parsed. A record still open
    when `ChunkScanner.flush` is called is reported with `complete` False and reported
    again, with the same `serial`, once it is complete.
    """

    record: LogRecord
    hit_lines: tuple[int, ...]
    hits: tuple[ParsedLine, ...]
    serial: int
    complete: bool


def _searches(anchors: Iterable[bytes]) -> list[Callable[[bytes, int, int], int]]:
    """One search per first byte: ``find(buf, start, end) -> position or -1``.

    Each search is one pass over the chunk in C, and a pass costs about the same whether it
    looks for one literal or for several that share a first byte (`re` scans for the byte,
    then tries the rest). So anchors sharing a first byte share a pass.
    """
    groups: dict[bytes, list[bytes]] = {}
    for anchor in sorted(set(anchors), key=len, reverse=True):
        if anchor:
            groups.setdefault(anchor[:1], []).append(anchor)
    out: list[Callable[[bytes, int, int], int]] = []
    for first, group in groups.items():
        if len(group) == 1:
            out.append(partial(_find, group[0]))
        else:
            rests = b"|".join(re.escape(a[1:]) for a in group)
            out.append(partial(_search, re.compile(re.escape(first) + b"(?:" + rests + b")")))
    return out


def _find(anchor: bytes, buf: bytes, start: int, end: int) -> int:
    return buf.find(anchor, start, end)


def _search(pattern: re.Pattern[bytes], buf: bytes, start: int, end: int) -> int:
    m = pattern.search(buf, start, end)
    return -1 if m is None else m.start()


class ChunkScanner:
    """Find the records that contain any of `anchors` in a stream of byte chunks.

    Hot path: one search in C over each chunk per group of anchors (see `_searches`);
    lines without a hit are never decoded or parsed. Only around a hit are lines parsed, walking back to the
    record's first line and forward to its end. The carried buffer always starts at a
    record start, so the backward walk never needs earlier data. A record is reported when
    the line after it arrives (or on `flush`), so chunk boundaries do not change results.
    """

    def __init__(
        self, anchors: Iterable[bytes], *, max_carry: int = 1 << 20, max_walk: int = 2000
    ) -> None:
        self._searches = _searches(anchors)
        self._max_carry = max_carry
        self._max_walk = max_walk
        self._buf = b""
        self._scanned = 0  # bytes of _buf already searched for anchors
        self._hits: list[int] = []  # line offsets in _buf of hits not reported complete
        self._serial = 0
        self._open_serial: int | None = None  # serial of the flushed, still open record

    @property
    def pending(self) -> bool:
        """An open record with hits waits for its end (or for `flush`)."""
        return bool(self._hits)

    def feed(self, data: bytes) -> list[HitRecord]:
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n") + 1
        out: list[HitRecord] = []
        if end > self._scanned:
            self._find_hits(buf, end)
            carry = self._records(buf, end, out)
            self._buf = buf[carry:]
            self._scanned = end - carry
            self._hits = [h - carry for h in self._hits]
        else:
            self._buf = buf
        if len(self._buf) > self._max_carry:
            out.extend(self._force_close())
        return out

    def flush(self, *, final: bool = False) -> list[HitRecord]:
        """Report the open record's hits so far; `final` also ends the stream."""
        if final:
            out = self.feed(b"\n") if self._buf and not self._buf.endswith(b"\n") else []
            out.extend(self._open_record(complete=True))
            self._buf, self._scanned, self._hits, self._open_serial = b"", 0, [], None
            return out
        return self._open_record(complete=False)

    def _find_hits(self, buf: bytes, end: int) -> None:
        found = set(self._hits)
        for search in self._searches:
            i = search(buf, self._scanned, end)
            while i >= 0:
                found.add(buf.rfind(b"\n", 0, i) + 1)
                i = search(buf, buf.find(b"\n", i, end) + 1, end)
        self._hits = sorted(found)

    def _records(self, buf: bytes, end: int, out: list[HitRecord]) -> int:
        """Report complete records with hits; return the offset the carry starts at."""
        cache: dict[int, ParsedLine] = {}
        done = 0  # everything before `done` belongs to reported or hit-free records
        hits = self._hits
        k = 0
        while k < len(hits):
            start = self._walk_back(buf, hits[k], done, cache)
            offsets, stop, closed = self._walk_forward(buf, start, end, cache)
            if not closed:
                self._hits = hits[k:]
                return start
            first = k
            while k < len(hits) and hits[k] < stop:
                k += 1
            out.append(self._report(buf, offsets, hits[first:k], cache))
            self._open_serial = None
            done = stop
        self._hits = []
        if done >= end:
            return end
        return self._walk_back(buf, buf.rfind(b"\n", 0, end - 1) + 1, done, cache)

    def _report(
        self, buf: bytes, offsets: list[int], hits: list[int], cache: dict[int, ParsedLine]
    ) -> HitRecord:
        """The record of `offsets` (from the carry's start if offsets[0] is 0)."""
        index = {off: i for i, off in enumerate(offsets)}
        lines = [self._line(buf, off, cache)[0] for off in offsets]
        serial = self._open_serial if offsets[0] == 0 else None
        if serial is None:
            self._serial += 1
            serial = self._serial
        hit_lines = tuple(index[h] for h in hits)
        parsed = tuple(lines[i] for i in hit_lines)
        return HitRecord(_record(lines), hit_lines, parsed, serial, True)

    def _open_record(self, *, complete: bool) -> list[HitRecord]:
        if not self._hits:
            return []
        buf = self._buf
        end = buf.rfind(b"\n") + 1
        cache: dict[int, ParsedLine] = {}
        offsets, _, _ = self._walk_forward(buf, 0, end, cache)
        found = self._report(buf, offsets, self._hits, cache)
        self._open_serial = None if complete else found.serial
        return [found._replace(complete=complete)]

    def _force_close(self) -> list[HitRecord]:
        # A runaway record (or a line with no newline): report it and start afresh, so
        # memory stays bounded; only records larger than max_carry are cut this way.
        out = self._open_record(complete=True)
        end = self._buf.rfind(b"\n") + 1
        partial = self._buf[end:]
        self._buf = b"" if len(partial) > self._max_carry else partial
        self._scanned, self._hits, self._open_serial = 0, [], None
        return out

    @staticmethod
    def _line(buf: bytes, off: int, cache: dict[int, ParsedLine]) -> tuple[ParsedLine, int]:
        nl = buf.find(b"\n", off)
        parsed = cache.get(off)
        if parsed is None:
            parsed = split_line(buf[off:nl].decode("utf-8", "replace"))
            cache[off] = parsed
        return parsed, nl + 1

    def _continued(self, buf: bytes, off: int, lo: int, cache: dict[int, ParsedLine]) -> int:
        """The previous line's offset if the line at `off` continues it, else -1."""
        if off <= lo:
            return -1
        cur = self._line(buf, off, cache)[0]
        if cur.header is not None and buf[off - 2 : off - 1] != b"\r":
            return -1  # formatted line after a line without "\r": no need to parse it
        prev_off = buf.rfind(b"\n", lo, off - 1) + 1 or lo
        prev = self._line(buf, prev_off, cache)[0]
        verdict = continuation(prev, cur)
        if verdict is None:
            verdict = self._in_traceback(buf, prev_off, lo, cache)
        return prev_off if verdict else -1

    def _in_traceback(self, buf: bytes, off: int, lo: int, cache: dict[int, ParsedLine]) -> bool:
        for _ in range(self._max_walk):
            line = self._line(buf, off, cache)[0]
            if _starts_traceback(line):
                return True
            if not _indented(line.message):
                return False
            off = self._continued(buf, off, lo, cache)
            if off < 0:
                return False
        return False

    def _walk_back(self, buf: bytes, off: int, lo: int, cache: dict[int, ParsedLine]) -> int:
        for _ in range(self._max_walk):
            prev = self._continued(buf, off, lo, cache)
            if prev < 0:
                return off
            off = prev
        return off

    def _walk_forward(
        self, buf: bytes, start: int, end: int, cache: dict[int, ParsedLine]
    ) -> tuple[list[int], int, bool]:
        """Offsets of the record's lines from `start`; where it stops; whether it closed."""
        first, off = self._line(buf, start, cache)
        offsets = [start]
        prev, in_tb = first, _in_traceback_after(first, False, False)
        while off < end:
            cur, nxt = self._line(buf, off, cache)
            if not continues(prev, cur, in_tb) or len(offsets) >= self._max_walk:
                return offsets, off, True
            in_tb = _in_traceback_after(cur, True, in_tb)
            offsets.append(off)
            prev, off = cur, nxt
        return offsets, end, False
