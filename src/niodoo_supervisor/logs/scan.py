"""Find the records of a byte stream that hold an anchor text, parsing only around the
hits (`ChunkScanner`, which reports each as a `HitRecord`). Records are grouped by
`line.continuation`, as `line.RecordAssembler` groups them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import NamedTuple

from ahocorasick_rs import BytesAhoCorasick, MatchKind

from niodoo_supervisor.logs.line import (
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
# The lines of the current feed's buffer parsed so far, by offset.
_Cache = dict[int, ParsedLine]


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


class _Walk:
    """A record walked forward so far. The open record's walk is kept across feeds, so each
    line of a long record is parsed and judged once, however the stream is chunked (vLLM
    writes one line per write; a client can make it write long records). Offsets are from
    the record's first line, which `base` places in this feed's buffer (0 once carried)."""

    __slots__ = ("base", "hit_lines", "in_tb", "lines", "offsets", "resume", "serial")

    def __init__(self, base: int, first: ParsedLine, resume: int) -> None:
        self.base = base
        self.offsets = [0]
        self.lines = [first]
        # Whether the last line is a traceback header or one of its frame lines.
        self.in_tb = _starts_traceback(first)
        self.resume = resume  # the first line not walked yet
        self.hit_lines: list[int] = []  # indexes in `lines`
        self.serial: int | None = None  # set once reported early by `flush`


class ChunkScanner:
    """Find the records that contain any of `anchors` in a stream of byte chunks.

    Hot path: one pass over each chunk in native code for all anchors at once (an
    Aho-Corasick automaton with a SIMD prefilter); lines without a hit are never decoded or
    parsed. Only around a hit are lines parsed, walking back to the record's first line and
    forward to its end; a line longer than `max_line` bytes is cut to that before parsing
    (counted in `cut_lines` when it holds a hit). The carried buffer always starts at the
    open record's first line, and that record's walk resumes where the last feed left it,
    so scanning costs time linear in the input. A record is reported when the line after it
    arrives (or on `flush`), so chunk boundaries do not change results. Records are cut at
    `max_walk` lines, as `line.RecordAssembler` cuts them at `max_lines`.
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
        self.parsed_lines = 0  # lines parsed around hits (each line of a record about once)
        self._parsed: dict[bytes, ParsedLine] = {}
        # Appended to and cut from the front in place: copying the carry on every feed would
        # cost time quadratic in a long record's size.
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for anchors
        self._open: _Walk | None = None  # the record _buf starts with, walked to _scanned
        self._serial = 0

    @property
    def pending(self) -> bool:
        """An open record with hits waits for its end (or for `flush`)."""
        return self._open is not None and bool(self._open.hit_lines)

    def feed(self, data: bytes) -> list[HitRecord]:
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n") + 1
        out: list[HitRecord] = []
        if end > self._scanned:
            carry = self._records(buf, end, self._find_hits(buf, end), out)
            del buf[:carry]
            self._scanned = end - carry
        if len(buf) > self._max_carry:
            out.extend(self._force_close())
        return out

    def flush(self, *, final: bool = False) -> list[HitRecord]:
        """Report the open record's hits so far; `final` also ends the stream."""
        if final:
            out = self.feed(b"\n") if self._buf and not self._buf.endswith(b"\n") else []
            out.extend(self._open_record(complete=True))
            self._buf.clear()
            self._scanned, self._open = 0, None
            return out
        return self._open_record(complete=False)

    def _find_hits(self, buf: bytearray, end: int) -> list[int]:
        """The offsets of the lines in buf[_scanned:end] that hold an anchor.

        The automaton runs over windows of the buffer, so a line full of anchors costs one
        window of matches, not one match per anchor: after a hit the search goes on at the
        next line. A window that ends inside a line without a hit is followed by one that
        starts `_overlap` bytes earlier, so an anchor across the border is still found.
        """
        automaton, pos = self._automaton, self._scanned
        hits: list[int] = []
        if automaton is None:
            return hits
        view = memoryview(buf)
        skip = pos  # the end of the last line with a hit
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
        return hits

    def _records(self, buf: bytearray, end: int, hits: list[int], out: list[HitRecord]) -> int:
        """Walk the records of buf[:end] that hold `hits` (new ones, in order) and the last
        one; report those that closed with hits; return the offset the carry starts at."""
        cache: _Cache = {}
        last = buf.rfind(b"\n", 0, end - 1) + 1
        walk = self._open  # resumed: its lines before _scanned are walked already
        k = 0  # the next hit not in a walked record
        pos = 0  # the records before `pos` are reported or hold no hit
        target = -1  # the line whose backward walk started `walk`
        while True:
            if walk is None:
                # Walk back from the next hit (or the last line) to its record's start,
                # never before `pos`; hit-free records before it are never parsed.
                target = hits[k] if k < len(hits) else last
                walk = self._start(buf, self._walk_back(buf, target, pos, cache), cache)
            stop = None  # a record started on the last line has nothing more to walk
            if walk.base + walk.resume < end:
                stop = self._walk_forward(buf, walk, end, last, cache)
            inside = end if stop is None else stop
            while k < len(hits) and hits[k] < inside:
                walk.hit_lines.append(bisect_left(walk.offsets, hits[k] - walk.base))
                k += 1
            if stop is None:
                break
            if walk.hit_lines:
                out.append(self._report(walk, complete=True))
            pos, walk = stop, None
            if stop <= target:
                # The backward walk found `stop` inside the target's chain, but going
                # forward a record ends there (cut at max_walk lines, or a traceback state
                # the cut reset): the next record starts there, no need to walk back again.
                walk = self._start(buf, stop, cache)
        carry, walk.base = walk.base, 0
        self._open = walk
        return carry

    def _start(self, buf: bytearray, off: int, cache: _Cache) -> _Walk:
        first, nxt = self._line(buf, off, cache)
        return _Walk(off, first, nxt - off)

    def _report(self, walk: _Walk, *, complete: bool) -> HitRecord:
        serial = walk.serial
        if serial is None:
            self._serial += 1
            serial = self._serial
        hit_lines = tuple(walk.hit_lines)
        parsed = tuple(walk.lines[i] for i in hit_lines)
        return HitRecord(_record(walk.lines), hit_lines, parsed, serial, complete)

    def _open_record(self, *, complete: bool) -> list[HitRecord]:
        walk = self._open
        if walk is None or not walk.hit_lines:
            return []
        found = self._report(walk, complete=complete)
        walk.serial = None if complete else found.serial
        return [found]

    def _force_close(self) -> list[HitRecord]:
        # A runaway record (or a line with no newline): report it and start afresh, so
        # memory stays bounded; only records larger than max_carry are cut this way.
        out = self._open_record(complete=True)
        buf = self._buf
        del buf[: buf.rfind(b"\n") + 1]
        if len(buf) > self._max_carry:
            buf.clear()
        self._scanned, self._open = 0, None
        return out

    def _line(self, buf: bytearray, off: int, cache: _Cache) -> tuple[ParsedLine, int]:
        nl = buf.find(b"\n", off)
        parsed = cache.get(off)
        if parsed is None:
            self.parsed_lines += 1
            parsed = cache[off] = self._parse(buf, off, nl)
        return parsed, nl + 1

    def _parse(self, buf: bytearray, off: int, nl: int) -> ParsedLine:
        if nl - off > self._max_line:
            text = buf[off : off + self._max_line].decode("utf-8", "ignore")
            cr = buf[nl - 1 : nl] == b"\r"
            return split_line(text)._replace(cr=cr, cut=nl - off)
        if nl - off > _REMEMBER_LINE:
            return split_line(buf[off:nl].decode("utf-8", "replace"))
        line = bytes(buf[off:nl])
        parsed = self._parsed.get(line)
        if parsed is None:
            if len(self._parsed) >= _REMEMBER_LINES:
                self._parsed.clear()
            parsed = self._parsed[line] = split_line(line.decode("utf-8", "replace"))
        return parsed

    def _continued(self, buf: bytearray, off: int, lo: int, cache: _Cache) -> int:
        """The previous line's offset if the line at `off` continues it, else -1.

        Judged without `max_walk` cuts: where a cut ends a record, this may still say
        "continues", so a backward walk stops at a record start or earlier, never later.
        """
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

    def _in_traceback(self, buf: bytearray, off: int, lo: int, cache: _Cache) -> bool:
        # Back over the frame lines to the traceback header, with no cap: a run of frame
        # lines is passed at most twice in a backward walk, and the backward walks of a feed
        # never overlap (each starts after the records the previous one led to).
        while True:
            line = self._line(buf, off, cache)[0]
            if _starts_traceback(line):
                return True
            if not _indented(line.message):
                return False
            off = self._continued(buf, off, lo, cache)
            if off < 0:
                return False

    def _walk_back(self, buf: bytearray, off: int, lo: int, cache: _Cache) -> int:
        # Not cut at max_walk lines: the start found must be a record start (the forward
        # walk then cuts), and every line passed is one the forward walk takes anyway.
        while (prev := self._continued(buf, off, lo, cache)) >= 0:
            off = prev
        return off

    def _walk_forward(
        self, buf: bytearray, walk: _Walk, end: int, last: int, cache: _Cache
    ) -> int | None:
        """Add to `walk` the lines up to `end` that continue it; return where the record
        stops (the next one's start), or None if it may go on after `end`."""
        base = walk.base
        off, prev, in_tb = base + walk.resume, walk.lines[-1], walk.in_tb
        while off < end:
            if len(walk.lines) >= self._max_walk:
                return off
            # A line that surely starts a record need not be parsed; but the last line is
            # parsed anyway (it starts or continues the open record).
            if off != last and not prev.cr and headed(buf, off):
                return off
            cur, nxt = self._line(buf, off, cache)
            if not continues(prev, cur, in_tb):
                return off
            in_tb = _in_traceback_after(cur, True, in_tb)
            walk.offsets.append(off - base)
            walk.lines.append(cur)
            prev, off = cur, nxt
        walk.in_tb, walk.resume = in_tb, off - base
        return None
