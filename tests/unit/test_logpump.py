"""The pump on real OS pipes written by a child process."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.logs.builtin_rules import BUILTIN_RULES, SERVING_PHASES
from niodoo_supervisor.logs.line import assemble, split_line
from niodoo_supervisor.logs.pump import LogPump
from niodoo_supervisor.logs.rule_types import Action, Event
from niodoo_supervisor.logs.rules import RuleSet
from niodoo_supervisor.logs.sinks import RotatingLogFile
from niodoo_supervisor.logs.trust import ONLY_RULES, LineKind, line_kind, trusted_starts

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-logs"
RULES = RuleSet()

# Writes the file argv[1] to stdout in pieces of varied size; with argv[2] (an offset), waits
# for a line on stdin after that many bytes.
CHILD = r"""
import os, random, sys
data = open(sys.argv[1], "rb").read()
gate = len(sys.argv) > 2
half = int(sys.argv[2]) if gate else len(data)
rnd = random.Random(7)
def send(buf):
    pos = 0
    while pos < len(buf):
        n = rnd.choice([1, 7, 100, 4096, 70000])
        os.write(1, buf[pos:pos + n])
        pos += n
send(data[:half])
if gate:
    sys.stdin.readline()
    send(data[half:])
"""


@contextmanager
def child_writing(tmp_path: Path, data: bytes, *, gate: int | None = None) -> Iterator[Any]:
    """A child process writing `data` into a pipe; yields (read fd, process)."""
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    r, w = os.pipe()
    argv = [sys.executable, "-c", CHILD, str(source)] + ([str(gate)] if gate is not None else [])
    proc = subprocess.Popen(argv, stdout=w, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
    os.close(w)
    try:
        yield r, proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        os.close(r)  # a child still writing gets EPIPE instead of hanging
        proc.wait(timeout=30)


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def fixtures() -> bytes:
    return b"".join(p.read_bytes() for p in sorted(LOGS.glob("*.log")))


_Found = tuple[str, Action, str | None, str]


def reference_events(text: str) -> list[_Found]:
    """The events of `text` found the plain way, sharing no code with the scanner: whole
    records (`assemble`), every line of each, every built-in rule's pattern run by Python's
    `re`, at most once per record, with the trust rules of `logs.trust`; a fatal event once
    vLLM is serving is only logged. As (rule, action, process, message)."""
    compiled = [(rule, re.compile(rule.pattern)) for rule in BUILTIN_RULES]
    serving = False
    found: list[_Found] = []
    for record in assemble(text.split("\n")[:-1]):
        fired: set[str] = set()
        for raw in record.lines:
            line = split_line(raw)
            kind = line_kind(line)
            for rule, regex in compiled:
                if rule.name in fired or kind is LineKind.REQUEST:
                    continue
                if kind in ONLY_RULES and rule.name not in ONLY_RULES[kind]:
                    continue
                if rule.anywhere:
                    hit = regex.search(line.message) is not None
                else:
                    hit = any(regex.match(start) for start in trusted_starts(line.message))
                if not hit:
                    continue
                fired.add(rule.name)
                demoted = rule.action is Action.FATAL and serving
                action = Action.LOG if demoted else rule.action
                found.append((rule.name, action, record.process, line.message.strip()))
                answered = any(rule.name in names for names in ONLY_RULES.values())
                serving = serving or answered or rule.phase in SERVING_PHASES
    return found


def rotated(path: Path) -> list[Path]:
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


async def test_all_bytes_reach_the_file_and_events_match(tmp_path: Path) -> None:
    data = fixtures() * 3
    events: list[Event] = []
    log_file = RotatingLogFile(tmp_path / "vllm.log", 1 << 30, 2)
    with child_writing(tmp_path, data) as (fd, _):
        # flush_delay: no early flush, so events carry whole records as a single scan would
        pump = LogPump(fd, ruleset=RULES, on_event=events.append, log_file=log_file,
                       echo=None, flush_delay=60)  # fmt: skip
        await asyncio.wait_for(pump.run(), 30)
    log_file.close()
    assert (tmp_path / "vllm.log").read_bytes() == data
    expected = reference_events(data.decode())
    # Phases, engine deaths, and fatal lines logged after vLLM started serving (the fixtures
    # are one stream here, so serving begins in the first log and lasts).
    fatal_rules = {rule.name for rule in BUILTIN_RULES if rule.action is Action.FATAL}
    assert {action for _, action, _, _ in expected} == {Action.PHASE, Action.CHECK_NOW, Action.LOG}
    assert any(rule in fatal_rules for rule, _, _, _ in expected)
    # Messages compared on their first 500 characters: events cut longer ones (`rules.clip`).
    got = [(e.rule, e.action, e.process, e.message[:500]) for e in events]
    assert got == [(rule, action, process, text[:500]) for rule, action, process, text in expected]
    # Read in pieces of every size, the pump found what one scan of the whole text finds,
    # details and all.
    scanner = RULES.scanner()
    whole = scanner.feed(data) + scanner.flush(final=True)
    assert [e.as_dict() for e in events] == [e.as_dict() for e in whole]
    stats = pump.stats
    assert (stats.bytes, stats.lines, stats.events) == (len(data), data.count(b"\n"), len(events))
    assert (stats.dropped_bytes, stats.write_errors) == (0, 0)
    assert stats.last_output_monotonic is not None


async def test_rotation_keeps_lines_whole_and_backup_count(tmp_path: Path) -> None:
    data = b"".join(b"line %05d %s\n" % (i, b"x" * (i % 50)) for i in range(3000))
    path = tmp_path / "logs" / "vllm.log"
    log_file = RotatingLogFile(path, 4000, 3)
    with child_writing(tmp_path, data) as (fd, _):
        await LogPump(
            fd, ruleset=RULES, on_event=lambda e: None, log_file=log_file, echo=None
        ).run()
    log_file.close()
    files = rotated(path)
    assert [p.name for p in files] == ["vllm.log.3", "vllm.log.2", "vllm.log.1", "vllm.log"]
    kept = b"".join(p.read_bytes() for p in files)
    assert data.endswith(kept)
    for p in files[:-1]:
        content = p.read_bytes()
        assert 3900 < len(content) <= 4000 and content.endswith(b"\n")


def test_rotating_file_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "v.log"
    log = RotatingLogFile(path, 10, 1)
    log.write(b"0123456789abcdef\nxy\n")  # a line longer than the file gets one of its own
    assert (tmp_path / "v.log.1").read_bytes() == b"0123456789abcdef\n"
    assert path.read_bytes() == b"xy\n"
    log.write(b"zzzzzz\n")  # fits (10 bytes)
    log.write(b"ab\ncd")  # no room left: rotates first, the oldest backup goes
    log.close()
    assert (tmp_path / "v.log.1").read_bytes() == b"xy\nzzzzzz\n"
    assert path.read_bytes() == b"ab\ncd"
    truncating = RotatingLogFile(tmp_path / "t.log", 8, 0)
    truncating.write(b"1234567\n89\n")
    truncating.close()
    assert (tmp_path / "t.log").read_bytes() == b"89\n"
    assert not (tmp_path / "t.log.1").exists()
    reopened = RotatingLogFile(path, 10, 1)
    reopened.write(b"\nxyzxyz\n")  # knows the 5 bytes already there: ends that line, rotates
    reopened.close()
    assert path.read_bytes() == b"xyzxyz\n"
    assert (tmp_path / "v.log.1").read_bytes() == b"ab\ncd\n"


class EchoBuffer:
    """The echo's target (the output writer's part) keeping what it is given, call by call."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def echo(self, lines: bytes) -> None:
        self.calls.append(lines)

    def getvalue(self) -> bytes:
        return b"".join(self.calls)


class GatedEcho(EchoBuffer):
    """A journal that hangs until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def echo(self, lines: bytes) -> None:
        self.gate.wait()
        super().echo(lines)


async def test_blocked_sink_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    data = b"".join(b"(APIServer pid=1) INFO 11-24 00:00:00 [x.py:1] line %06d\n" % i
                    for i in range(200000))  # fmt: skip
    first = len(data) * 3 // 4 + 17  # the child pauses here, in the middle of a line
    echo = GatedEcho()
    log_file = RotatingLogFile(tmp_path / "vllm.log", 1 << 30, 1)
    limit = 4 << 20
    marker = b"[niodoo-supervisor] dropped %d bytes of vLLM output: log sink too slow\n"
    with child_writing(tmp_path, data, gate=first) as (fd, proc):
        pump = LogPump(fd, ruleset=RULES, on_event=lambda e: None, log_file=log_file,
                       echo=echo, max_pending=limit)  # fmt: skip
        task = asyncio.create_task(pump.run())
        # Everything written so far is read although the journal takes nothing.
        await until(lambda: pump.stats.bytes == first)
        file_sink, echo_sink = pump.stats.sinks
        assert (file_sink.name, file_sink.dropped_bytes) == ("file", 0)
        assert first - limit <= echo_sink.dropped_bytes < first - limit + (1 << 20)
        assert echo_sink.dropped_lines > 0 and pump.stats.dropped_bytes == echo_sink.dropped_bytes
        echo.gate.set()  # the journal recovers and catches up with its queue
        await until(lambda: len(echo.getvalue()) == first - echo_sink.dropped_bytes)
        assert data.startswith(echo.getvalue())  # vLLM's bytes only: the gap is not over yet
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        await asyncio.wait_for(task, 20)
    log_file.close()
    assert (tmp_path / "vllm.log").read_bytes() == data  # the fast sink lost nothing
    dropped = pump.stats.sinks[1].dropped_bytes  # + the rest of the line cut at the pause
    written = echo.getvalue()
    assert written.count(b"[niodoo-supervisor]") == 1 and marker % dropped in written
    before, after = written.split(marker % dropped)
    # One gap, cut at line boundaries: the journal gets whole lines and one marker line.
    assert data.startswith(before) and data.endswith(after)
    assert before.endswith(b"\n") and data[: len(data) - len(after)].endswith(b"\n")
    assert len(before) + dropped + len(after) == len(data)
    assert len(after) == len(data) - data.index(b"\n", first) - 1  # resumed at the next line


class FullDisk(RotatingLogFile):
    """Raises ENOSPC until `freed` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, 1 << 30, 1)
        self.freed = threading.Event()

    def write(self, data: bytes) -> None:
        if not self.freed.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write(data)


async def test_disk_full_does_not_stop_the_pump(tmp_path: Path) -> None:
    data = b"".join(b"request %05d done\n" % i for i in range(20000))
    half = len(data) // 2
    log_file = FullDisk(tmp_path / "vllm.log")
    with child_writing(tmp_path, data, gate=half) as (fd, proc):
        pump = LogPump(fd, ruleset=RULES, on_event=lambda e: None, log_file=log_file, echo=None)
        task = asyncio.create_task(pump.run())
        await until(lambda: pump.stats.bytes == half and pump.stats.lost_bytes == half)
        assert pump.stats.write_errors >= 1
        log_file.freed.set()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        await asyncio.wait_for(task, 20)
    log_file.close()
    text = (tmp_path / "vllm.log").read_bytes()
    note = b"[niodoo-supervisor] lost %d bytes of vLLM output: No space left on device\n" % half
    assert text == note + data[half:]
    assert pump.stats.bytes == len(data) and pump.stats.lost_bytes == 0


async def test_event_of_a_quiet_child_arrives_without_eof(tmp_path: Path) -> None:
    h = "(APIServer pid=1) ERROR 11-24 00:00:00 [async_llm.py:906] "
    data = f"{h}AsyncLLM output_handler failed.\r\n{h}EngineDeadError: x\n".encode()
    got = asyncio.Event()
    events: list[Event] = []

    def on_event(event: Event) -> None:
        events.append(event)
        got.set()

    with child_writing(tmp_path, data + b"more\n", gate=len(data)) as (fd, proc):
        pump = LogPump(fd, ruleset=RULES, on_event=on_event, log_file=None, echo=None,
                       flush_delay=0.05)  # fmt: skip
        task = asyncio.create_task(pump.run())
        await asyncio.wait_for(got.wait(), 10)  # the child still runs and says nothing
        assert [e.rule for e in events] == ["engine_dead"]
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(task, 20)
    assert [e.rule for e in events] == ["engine_dead"]  # completing the record: no repeat


async def test_tail_stats_clock_and_a_failing_handler(tmp_path: Path) -> None:
    lines = [f"(APIServer pid=1) INFO 11-24 00:00:00 [x.py:1] line {i}" for i in range(5000)]
    data = ("\n".join(lines) + "\nINFO:     Application startup complete.\nno newline").encode()

    def explode(event: Event) -> None:
        raise RuntimeError("handler bug")

    with child_writing(tmp_path, data) as (fd, _):
        pump = LogPump(fd, ruleset=RULES, on_event=explode, log_file=None, echo=None,
                       tail_lines=3, clock=lambda: 123.0)  # fmt: skip
        await asyncio.wait_for(pump.run(), 20)
    assert pump.tail() == [lines[-1], "INFO:     Application startup complete.", "no newline"]
    stats = pump.stats
    assert stats.events == 1 and stats.last_output_monotonic == 123.0
    assert stats.as_dict()["bytes"] == len(data)


async def test_tail_before_any_output(tmp_path: Path) -> None:
    with child_writing(tmp_path, b"") as (fd, _):
        pump = LogPump(fd, ruleset=RULES, on_event=lambda e: None, log_file=None, echo=None)
        assert pump.tail() == [] and pump.last_output_monotonic is None
        await asyncio.wait_for(pump.run(), 20)
    assert pump.tail() == [] and pump.stats.bytes == 0


@pytest.mark.parametrize("size", [1, 3])
async def test_echo_gets_every_line_whole_when_fast(tmp_path: Path, size: int) -> None:
    data = fixtures()[: 5000 * size]
    assert not data.endswith(b"\n")  # the stream ends inside a line
    echo = EchoBuffer()
    with child_writing(tmp_path, data) as (fd, _):
        await LogPump(fd, ruleset=RULES, on_event=lambda e: None, log_file=None, echo=echo).run()
    # Each hand-over is whole lines; the last line, cut by the stream's end, ends the echo.
    assert all(call.endswith(b"\n") for call in echo.calls)
    assert echo.getvalue() == data + b"\n"


async def test_long_lines_are_cut_for_the_rules_and_the_tail_but_not_the_file(
    tmp_path: Path,
) -> None:
    line = (
        "(APIServer pid=1) DEBUG 11-24 00:00:00 [protocol.py:72] The following fields were "
        "present in the request but ignored: {'" + "z" * 200_000 + "'}\n"
    ).encode()
    events: list[Event] = []
    log_file = RotatingLogFile(tmp_path / "vllm.log", 1 << 30, 1)
    with child_writing(tmp_path, line * 3) as (r, _):
        pump = LogPump(r, ruleset=RULES, on_event=events.append, log_file=log_file, echo=None)
        await pump.run()
    log_file.close()
    assert (tmp_path / "vllm.log").read_bytes() == line * 3  # the file has every byte
    assert [e.rule for e in events] == ["ignored_request_fields", "line_cut"] * 3
    assert pump.stats.cut_lines == 3
    tail = pump.tail()  # crash reports: bounded lines
    assert len(tail) == 3 and all(len(text) < 2100 and text.endswith(" cut]") for text in tail)
