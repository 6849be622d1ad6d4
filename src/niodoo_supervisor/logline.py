"""One line of vLLM's output (0.10 to 0.33) taken apart, and whether it continues a record.

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
The streaming `RecordAssembler` (`logparse`) and the `ChunkScanner` (`logscan`, which
parses only around anchor hits) both use it, so a record is the same whichever way the
text was read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "LogRecord",
    "ParsedLine",
    "continuation",
    "continues",
    "parse_line",
    "split_line",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Ray adds ", ip=..." to the same prefix; a cyan colour code may wrap it (0.10.2-0.30).
_PREFIX = re.compile(r"\((?P<proc>[A-Za-z_][\w.:-]*) pid=(?P<pid>[0-9]{1,10})(?:, ip=[^)]*)?\) ?")
_LEVELS = "DEBUG|INFO|WARNING|ERROR|CRITICAL"
_VLLM = re.compile(
    rf"(?P<level>{_LEVELS}) (?P<ts>[0-9]{{2}}-[0-9]{{2}} [0-9:]{{8}}(?:\.[0-9]+)?) "
    r"\[?(?P<src>[^\s\[\]]+:[0-9]+)\] ?"
)
_UVICORN = re.compile(rf"(?P<level>{_LEVELS}|TRACE): +")
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
    """A line taken apart; `header` is set only for vLLM-formatted lines."""

    process: str | None
    pid: int | None
    level: str | None
    timestamp: str | None
    source: str | None
    header: str | None
    message: str
    cr: bool
    raw: str


def split_line(line: str) -> ParsedLine:
    """Take one line apart. Never raises; unknown text becomes the message."""
    raw = line[:-1] if line.endswith("\n") else line
    cr = raw.endswith("\r")
    if cr:
        raw = raw[:-1]
    text = _ANSI.sub("", raw) if "\x1b" in raw else raw
    process: str | None = None
    pid: int | None = None
    pos = 0
    m = _PREFIX.match(text)
    if m is not None:
        process, pid, pos = m["proc"], int(m["pid"]), m.end()
    v = _VLLM.match(text, pos)
    if v is not None:
        return ParsedLine(
            process, pid, v["level"], v["ts"], v["src"], text[: v.end()], text[v.end() :], cr, raw
        )
    u = _UVICORN.match(text, pos)
    if u is not None:
        return ParsedLine(process, pid, u["level"], None, None, None, text[u.end() :], cr, raw)
    return ParsedLine(process, pid, None, None, None, None, text[pos:], cr, raw)


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
