"""Parse vLLM's output (0.10 to 0.33) into log records; group multi-line records.

This module holds the streaming `RecordAssembler` and `assemble`, and re-exports the rest
of the parsing API: line parsing and the continuation rule from `logline` (which
describes the formats), chunk scanning (`ChunkScanner`, `HitRecord`) from `logscan`.
"""

from __future__ import annotations

from collections.abc import Iterable

from niodoo_supervisor.logs.line import (
    LogRecord,
    ParsedLine,
    _in_traceback_after,
    _record,
    continuation,
    continues,
    parse_line,
    split_line,
)
from niodoo_supervisor.logs.scan import ChunkScanner, HitRecord

__all__ = [
    "ChunkScanner",
    "HitRecord",
    "LogRecord",
    "ParsedLine",
    "RecordAssembler",
    "assemble",
    "continuation",
    "continues",
    "parse_line",
    "split_line",
]


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
