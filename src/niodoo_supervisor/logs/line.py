"""One line of vLLM's output (0.10 to 0.33) taken apart, whether it continues a record, and
the lines grouped into records.

vLLM writes one pipe of mixed lines:

- 0.31+: ``(APIServer pid=10618) INFO 11-24 00:56:50 [launcher.py:195] message``; the
  ``(Name pid=N)`` prefix comes from the formatter, so raw writes (tracebacks, warnings,
  progress bars) have no prefix.
- 0.10.2-0.30: every write of a process is wrapped with the prefix, so it may stand in
  front of an unformatted line (``(EngineCore_DP0 pid=7)   File "x.py", line 1``).
- 0.10.0: API-server lines have no prefix (``INFO 11-24 00:56:50 [file.py:1] message``).
- uvicorn: ``INFO:     Application startup complete.``; very old vLLM: ``file.py:1]``.

vLLM's ``NewLineFormatter`` repeats the header on every line of a multi-line message and
ends all but the last with ``\\r``: that is how a formatted traceback is recognised.
Unformatted tracebacks are recognised by their shape (``Traceback (most recent call
last):``, indented frames, the final exception line).

`continuation` is the single definition of "this line belongs to the record before it".
The streaming `RecordAssembler` (here) and the `ChunkScanner` (`scan`, which parses only
around anchor hits) both use it, so a record is the same whichever way the text was read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "LogRecord",
    "ParsedLine",
    "RecordAssembler",
    "assemble",
    "continuation",
    "continues",
    "headed",
    "parse_line",
    "split_line",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LEVELS = "DEBUG|INFO|WARNING|ERROR|CRITICAL"
# One match takes a line's headers apart (the hot path of the scanner, run on every line
# around a hit): the process prefix (Ray adds ", ip=..."; a cyan colour code may wrap it,
# 0.10.2-0.30), then vLLM's header or uvicorn's level. Groups in order: proc, pid, level, ts,
# src (vLLM), ulevel (uvicorn).
_HEADERS = re.compile(
    r"(?:\((?P<proc>[A-Za-z_][\w.:-]*) pid=(?P<pid>[0-9]{1,10})(?:, ip=[^)\n]*)?\) ?)?"
    rf"(?:(?P<level>{_LEVELS}) (?P<ts>[0-9]{{2}}-[0-9]{{2}} [0-9:]{{8}}(?:\.[0-9]+)?) "
    r"\[?(?P<src>[^\s\[\]]+:[0-9]+)\] ?"
    rf"|(?P<ulevel>{_LEVELS}|TRACE): +)?"
)
# The same on raw bytes, to tell a new record's start without decoding the line (`headed`).
_HEADERS_BYTES = re.compile(_HEADERS.pattern.encode())
_TRACEBACK = "Traceback (most recent call last):"
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log record: a single line, or a multi-line message such as a traceback.

    The header fields come from the record's first line. `message` is the text without
    headers (lines joined by ``\\n``); `lines` are the raw lines without line endings.
    """

    process: str | None
    pid: int | None
    level: str | None
    timestamp: str | None
    source: str | None
    message: str
    lines: tuple[str, ...]


class ParsedLine(NamedTuple):
    """A line taken apart; `header` is set only for vLLM-formatted lines. `cut` is the
    length in bytes of a line cut short before parsing (`raw` is its first part), else 0."""

    process: str | None
    pid: int | None
    level: str | None
    timestamp: str | None
    source: str | None
    header: str | None
    message: str
    cr: bool
    raw: str
    cut: int = 0


def split_line(line: str) -> ParsedLine:
    """Take one line apart. Never raises; unknown text becomes the message."""
    raw = line[:-1] if line.endswith("\n") else line
    cr = raw.endswith("\r")
    if cr:
        raw = raw[:-1]
    text = _ANSI.sub("", raw) if "\x1b" in raw else raw
    m = _HEADERS.match(text)
    assert m is not None  # every part is optional
    process, pid, level, ts, src, ulevel = m.groups()
    end = m.end()
    number = int(pid) if pid is not None else None
    if level is not None:
        return ParsedLine(process, number, level, ts, src, text[:end], text[end:], cr, raw)
    return ParsedLine(process, number, ulevel, None, None, None, text[end:], cr, raw)


def headed(buf: bytes | bytearray, off: int) -> bool:
    """Whether the line at `off` surely has a vLLM header or a uvicorn level, as `split_line`
    would find, decided on the bytes. Such a line continues no record unless the line before
    it ended with ``\\r``. False when unsure (non-ASCII or colour codes in the headers)."""
    m = _HEADERS_BYTES.match(buf, off)
    if m is None or (m.group(3) is None and m.group(6) is None):
        return False
    # On ASCII text the str pattern decides alike; its quantifiers stop at delimiters inside
    # the match, so no character after the match is judged differently.
    span = buf[off : m.end()]
    return span.isascii() and b"\x1b" not in span


def parse_line(line: str) -> LogRecord:
    """Parse one line of vLLM output into a single-line `LogRecord`."""
    p = split_line(line)
    return LogRecord(p.process, p.pid, p.level, p.timestamp, p.source, p.message, (p.raw,))


def _starts_traceback(line: ParsedLine) -> bool:
    return line.message.startswith(_TRACEBACK)


def _indented(message: str) -> bool:
    return message[:1] in (" ", "\t")


def continuation(prev: ParsedLine, cur: ParsedLine) -> bool | None:
    """Whether `cur` belongs to the record `prev` is the last line of.

    None means "only if `prev` is inside a traceback": `cur` is then the final
    exception line. Callers that track traceback state use `continues`.
    """
    if cur.header is not None:
        # NewLineFormatter: same header, previous line ended with "\r".
        return prev.cr and cur.header == prev.header
    if cur.level is not None:
        return False  # uvicorn lines always start a record
    if (cur.process, cur.pid) != (prev.process, prev.pid):
        return False  # lines of another process (or unprefixed next to prefixed)
    msg = cur.message
    if not msg.strip() or _indented(msg) or msg.startswith(_CHAIN):
        return True
    if msg.startswith(_TRACEBACK):
        # "Process EngineCore_DP0:", "...another exception occurred:", or an error log
        # line printed just before traceback.print_exc().
        before = prev.message.rstrip()
        return not before or before.endswith(":") or prev.level in ("ERROR", "CRITICAL")
    return None


def continues(prev: ParsedLine, cur: ParsedLine, prev_in_traceback: bool) -> bool:
    """`continuation` with the traceback state known: `prev_in_traceback` says `prev` is a
    traceback header or one of its indented frame lines."""
    verdict = continuation(prev, cur)
    return prev_in_traceback if verdict is None else verdict


def _in_traceback_after(cur: ParsedLine, continued: bool, prev_in_traceback: bool) -> bool:
    """The `prev_in_traceback` value for the line after `cur`."""
    if _starts_traceback(cur):
        return True
    return continued and prev_in_traceback and _indented(cur.message)


def _record(lines: list[ParsedLine]) -> LogRecord:
    first = lines[0]
    return LogRecord(
        first.process,
        first.pid,
        first.level,
        first.timestamp,
        first.source,
        "\n".join(p.message for p in lines),
        tuple(p.raw for p in lines),
    )


class RecordAssembler:
    """Group lines into records, one line at a time.

    `feed` returns the record that the new line closed, if any; `flush` returns the
    record still open. A record longer than `max_lines` is cut there (bounded memory).
    """

    def __init__(self, max_lines: int = 2000) -> None:
        self._max_lines = max_lines
        self._lines: list[ParsedLine] = []
        self._in_tb = False

    def feed(self, line: str) -> LogRecord | None:
        cur = split_line(line)
        done: LogRecord | None = None
        cont = bool(self._lines) and len(self._lines) < self._max_lines
        cont = cont and continues(self._lines[-1], cur, self._in_tb)
        if not cont and self._lines:
            done = _record(self._lines)
            self._lines = []
        self._in_tb = _in_traceback_after(cur, cont, self._in_tb)
        self._lines.append(cur)
        return done

    def flush(self) -> LogRecord | None:
        if not self._lines:
            return None
        done = _record(self._lines)
        self._lines = []
        self._in_tb = False
        return done


def assemble(lines: Iterable[str]) -> list[LogRecord]:
    """All records of `lines` (convenience for tests and crash reports)."""
    assembler = RecordAssembler()
    out = [r for r in map(assembler.feed, lines) if r is not None]
    last = assembler.flush()
    if last is not None:
        out.append(last)
    return out
