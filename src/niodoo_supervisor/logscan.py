"""Find the records of a byte stream that hold an anchor text, parsing only around the
hits (`ChunkScanner`, which reports each as a `HitRecord`). Records are grouped by
`logline.continuation`, as `logparse.RecordAssembler` groups them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ahocorasick_rs import BytesAhoCorasick, MatchKind

from niodoo_supervisor.logline import (
    LogRecord,
    ParsedLine,
    _in_traceback_after,
    _indented,
    _record,
    _starts_traceback,
    continuation,
    continues,
    headed,
    split_line,
)

__all__ = ["MAX_LINE", "ChunkScanner", "HitRecord"]

# Longer lines are cut to this many bytes before they are parsed and matched: a client can
# make vLLM write a line of any length (the names of the request fields it ignored).
MAX_LINE = 16 << 10
# Parsed lines are remembered by their bytes (a client sending lora_name on every request
# makes the same line many times a second); only short lines, and only so many.
_REMEMBER_LINE = 1024
_REMEMBER_LINES = 2048


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


class ChunkScanner:
    """Find the records that contain any of `anchors` in a stream of byte chunks.

    Hot path: one pass over each chunk in native code for all anchors at once (an
    Aho-Corasick automaton with a SIMD prefilter); lines without a hit are never decoded or
    parsed. Only around a hit are lines parsed, walking back to the record's first line and
    forward to its end; a line longer than `max_line` bytes is cut to that before parsing
    (counted in `cut_lines` when it holds a hit). The carried buffer always starts at a
    record start, so the backward walk never needs earlier data. A record is reported when
    the line after it arrives (or on `flush`), so chunk boundaries do not change results.
    """

    def __init__(
        self,
        anchors: Iterable[bytes],
        *,
        max_carry: int = 1 << 20,
        max_walk: int = 2000,
        max_line: int = MAX_LINE,
        window: int = 1 << 16,
    ) -> None:
        wanted = sorted({a for a in anchors if a})
        if any(b"\n" in a for a in wanted):
            raise ValueError("an anchor cannot hold a newline")
        # Leftmost-first: the automaton may use its SIMD prefilter, and every line holding an
        # anchor still yields at least one match (anchors never span a newline).
        self._automaton = (
            BytesAhoCorasick(wanted, matchkind=MatchKind.LeftmostFirst) if wanted else None
        )
        self._overlap = max((len(a) for a in wanted), default=1) - 1
        self._window = max(window, 2 * self._overlap + 1)
        self._max_carry = max_carry
        self._max_walk = max_walk
        self._max_line = max_line
        self.cut_lines = 0  # lines with a hit that were longer than max_line
        self._parsed: dict[bytes, ParsedLine] = {}
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
        """Add the offsets of the lines in buf[_scanned:end] that hold an anchor.

        The automaton runs over windows of the buffer, so a line full of anchors costs one
        window of matches, not one match per anchor: after a hit the search goes on at the
        next line. A window that ends inside a line without a hit is followed by one that
        starts `_overlap` bytes earlier, so an anchor across the border is still found.
        """
        automaton, pos = self._automaton, self._scanned
        if automaton is None:
            return
        view = memoryview(buf)
        skip = pos  # the end of the last line with a hit
        hits = self._hits
        while pos < end:
            stop = min(pos + self._window, end)
            for _, found, _ in automaton.find_matches_as_indexes(view[pos:stop]):
                at = pos + found
                if at < skip:
                    continue
                line = buf.rfind(b"\n", self._scanned, at) + 1 or self._scanned
                newline = buf.find(b"\n", at, end)
                hits.append(line)
                if newline - line > self._max_line:
                    self.cut_lines += 1
                skip = newline + 1
            if skip >= stop:
                pos = skip
            elif stop < end:
                pos = stop - self._overlap
            else:
                break

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
            out.append(self._report(offsets, hits[first:k], cache))
            self._open_serial = None
            done = stop
        self._hits = []
        if done >= end:
            return end
        return self._walk_back(buf, buf.rfind(b"\n", 0, end - 1) + 1, done, cache)

    def _report(
        self, offsets: list[int], hits: list[int], cache: dict[int, ParsedLine]
    ) -> HitRecord:
        """The record of `offsets` (from the carry's start if offsets[0] is 0); the walks
        have parsed each of its lines into `cache`."""
        lines = [cache[off] for off in offsets]
        serial = self._open_serial if offsets[0] == 0 else None
        if serial is None:
            self._serial += 1
            serial = self._serial
        if len(offsets) == 1:  # most records: one line
            hit_lines: tuple[int, ...] = (0,)
        else:
            index = {off: i for i, off in enumerate(offsets)}
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
        found = self._report(offsets, self._hits, cache)
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

    def _line(self, buf: bytes, off: int, cache: dict[int, ParsedLine]) -> tuple[ParsedLine, int]:
        nl = buf.find(b"\n", off)
        parsed = cache.get(off)
        if parsed is None:
            parsed = cache[off] = self._parse(buf, off, nl)
        return parsed, nl + 1

    def _parse(self, buf: bytes, off: int, nl: int) -> ParsedLine:
        if nl - off > self._max_line:
            text = buf[off : off + self._max_line].decode("utf-8", "ignore")
            cr = buf[nl - 1 : nl] == b"\r"
            return split_line(text)._replace(cr=cr, cut=nl - off)
        if nl - off > _REMEMBER_LINE:
            return split_line(buf[off:nl].decode("utf-8", "replace"))
        line = buf[off:nl]
        parsed = self._parsed.get(line)
        if parsed is None:
            if len(self._parsed) >= _REMEMBER_LINES:
                self._parsed.clear()
            parsed = self._parsed[line] = split_line(line.decode("utf-8", "replace"))
        return parsed

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
            if not prev.cr and headed(buf, off):
                return offsets, off, True  # a new record starts: no need to parse it
            cur, nxt = self._line(buf, off, cache)
            if not continues(prev, cur, in_tb) or len(offsets) >= self._max_walk:
                return offsets, off, True
            in_tb = _in_traceback_after(cur, True, in_tb)
            offsets.append(off)
            prev, off = cur, nxt
        return offsets, end, False
