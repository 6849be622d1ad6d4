"""Line parsing and record grouping for every vLLM log format (and our logging config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.vllm_logging import ignored_fields_logger_for, logging_config_for
from niodoo_supervisor.logs.line import (
    LogRecord,
    RecordAssembler,
    assemble,
    headed,
    parse_line,
    split_line,
)
from niodoo_supervisor.logs.scan import ChunkScanner

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-logs"


def fixture_lines(name: str) -> list[str]:
    return (LOGS / name).read_bytes().decode().split("\n")[:-1]


# --- parse_line ------------------------------------------------------------------------


# (line, process, pid, level, timestamp, source, message)
FORMATS: list[tuple[Any, ...]] = [
    (  # 0.31+: prefix from the formatter
        "(APIServer pid=10618) INFO 11-24 00:56:50 [launcher.py:195] Route: /health",
        "APIServer", 10618, "INFO", "11-24 00:56:50", "launcher.py:195", "Route: /health",
    ),
    (
        "(EngineCore_DP0 pid=7) ERROR 08-01 10:00:00 [core.py:700] EngineCore failed.",
        "EngineCore_DP0", 7, "ERROR", "08-01 10:00:00", "core.py:700", "EngineCore failed.",
    ),
    (
        "(VllmWorker-0 pid=15845) WARNING 11-24 01:11:58 [vllm.py:725] Model Runner V2",
        "VllmWorker-0", 15845, "WARNING", "11-24 01:11:58", "vllm.py:725", "Model Runner V2",
    ),
    (
        "(Worker_TP0 pid=3) DEBUG 11-24 01:11:58 [a/b.py:1] x",
        "Worker_TP0", 3, "DEBUG", "11-24 01:11:58", "a/b.py:1", "x",
    ),
    (  # 0.10.2-0.30: the prefix (in cyan) wraps an unformatted traceback line
        '\x1b[1;36m(EngineCore_DP0 pid=7)\x1b[0;0m   File "x.py", line 3, in f',
        "EngineCore_DP0", 7, None, None, None, '  File "x.py", line 3, in f',
    ),
    (  # 0.10.0: no prefix on API-server lines
        "INFO 07-24 22:45:01 [api_server.py:1] vLLM API server version 0.10.0",
        None, None, "INFO", "07-24 22:45:01", "api_server.py:1",
        "vLLM API server version 0.10.0",
    ),
    (  # very old vLLM: no brackets
        "WARNING 07-24 22:45:01 config.py:12] Casting torch.float32 to torch.float16.",
        None, None, "WARNING", "07-24 22:45:01", "config.py:12",
        "Casting torch.float32 to torch.float16.",
    ),
    (  # Ray adds the node address
        "(RayWorkerWrapper pid=91, ip=10.0.0.2) INFO 11-24 01:00:00 [w.py:2] hi",
        "RayWorkerWrapper", 91, "INFO", "11-24 01:00:00", "w.py:2", "hi",
    ),
    ("INFO:     Application startup complete.", None, None, "INFO", None, None,
     "Application startup complete."),
    ("ERROR:    Exception in ASGI application", None, None, "ERROR", None, None,
     "Exception in ASGI application"),
    ("Traceback (most recent call last):", None, None, None, None, None,
     "Traceback (most recent call last):"),
    ("  warnings.warn(", None, None, None, None, None, "  warnings.warn("),
    ("", None, None, None, None, None, ""),
]  # fmt: skip


@pytest.mark.parametrize(("line", "fields"), [(c[0], c[1:]) for c in FORMATS])
def test_parse_line_formats(line: str, fields: tuple[Any, ...]) -> None:
    r = parse_line(line)
    assert (r.process, r.pid, r.level, r.timestamp, r.source, r.message) == fields
    assert r.lines == (line,)


def test_parse_line_keeps_the_raw_line_and_drops_line_endings() -> None:
    line = "(APIServer pid=1) ERROR 11-24 01:12:04 [async_llm.py:906] Traceback (most recent"
    record = parse_line(line + "\r\n")
    assert record.lines == (line,)
    assert record.message == "Traceback (most recent"


def test_parse_line_coloured_formatter() -> None:
    line = (
        "\x1b[0;36m(APIServer pid=5)\x1b[0;0m \x1b[32mINFO\x1b[0m \x1b[90m11-24 01:00:00\x1b[0m "
        "\x1b[90m[entry.py:140]\x1b[0m Starting vLLM server on http://127.0.0.1:8000"
    )
    record = parse_line(line)
    assert (record.process, record.pid, record.level, record.source) == (
        "APIServer",
        5,
        "INFO",
        "entry.py:140",
    )
    assert record.message == "Starting vLLM server on http://127.0.0.1:8000"


@settings(max_examples=500)
@given(st.text())
def test_parse_line_never_raises(text: str) -> None:
    record = parse_line(text)
    assert isinstance(record.message, str)
    assert len(record.lines) == 1


@given(st.binary(max_size=300))
def test_parse_line_never_raises_on_decoded_bytes(data: bytes) -> None:
    parse_line(data.decode("utf-8", "replace"))


# --- records -------------------------------------------------------------------------


def test_formatted_traceback_is_one_record() -> None:
    records = assemble(fixture_lines("02-enginecore-killed.log"))
    [dead] = [r for r in records if "EngineDeadError" in r.message]
    assert len(dead.lines) == 8
    assert dead.lines[0].endswith("AsyncLLM output_handler failed.")
    assert dead.lines[-1].endswith("See stack trace (above) for the root cause.")
    assert (dead.process, dead.level, dead.source) == ("APIServer", "ERROR", "async_llm.py:906")
    assert dead.message.split("\n")[1] == "Traceback (most recent call last):"


def test_raw_traceback_ends_at_the_exception_line() -> None:
    records = assemble(fixture_lines("06-port-in-use.log"))
    last = records[-1]
    assert last.lines[0] == "Traceback (most recent call last):"
    assert last.lines[-1] == "OSError: [Errno 98] Address already in use"
    assert last.process is None and last.level is None


def test_banner_routes_and_uvicorn_lines() -> None:
    records = assemble(fixture_lines("02-enginecore-killed.log"))
    [banner] = [r for r in records if "version 0.32.0" in r.message]
    assert len(banner.lines) == 6  # the logo is one multi-line message
    routes = [r for r in records if r.message.startswith("Route: ")]
    assert len(routes) > 30 and all(len(r.lines) == 1 for r in routes)
    uvicorn = [r for r in records if r.lines[0].startswith("INFO:     ")]
    assert uvicorn and all(len(r.lines) == 1 for r in uvicorn)


def test_python_warning_keeps_its_source_line() -> None:
    records = assemble(fixture_lines("01-start-requests-sigterm.log"))
    [warning] = [r for r in records if "DeprecationWarning: The `python -m" in r.message]
    assert warning.lines[1] == "  warnings.warn("


def test_worker_record_with_two_tracebacks() -> None:
    records = assemble(fixture_lines("05-rank-too-big.log"))
    [worker] = [r for r in records if r.message.startswith("WorkerProc hit an exception.")]
    assert worker.process == "Worker"
    assert worker.message.count("LoRA rank 64 is greater than max_lora_rank 16.") == 2
    assert len(worker.lines) == 42  # both tracebacks and the trailing empty line


def test_prefixed_raw_traceback_0_10_2_style() -> None:
    p = "(EngineCore_DP0 pid=7) "
    lines = [
        f"{p}ERROR 08-01 10:00:00 [core.py:700] EngineCore failed to start.",
        f"{p}Process EngineCore_DP0:",
        f"{p}Traceback (most recent call last):",
        f'{p}  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap',
        f"{p}    self.run()",
        f"{p}RuntimeError: boom",
        f"{p}",
        f"{p}During handling of the above exception, another exception occurred:",
        f"{p}",
        f"{p}Traceback (most recent call last):",
        f'{p}  File "x.py", line 1, in <module>',
        f"{p}ValueError: second",
        "(APIServer pid=1) INFO 08-01 10:00:01 [api_server.py:1] next",
    ]
    records = assemble(lines)
    assert [len(r.lines) for r in records] == [1, 11, 1]
    assert records[1].message.startswith("Process EngineCore_DP0:\nTraceback")
    assert records[1].message.endswith("ValueError: second")


def test_other_process_interrupts_a_raw_record() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "(Worker pid=2) INFO 11-24 00:00:00 [w.py:1] unrelated",
        "ValueError: x",
    ]
    assert [len(r.lines) for r in assemble(lines)] == [2, 1, 1]


def test_assembler_cuts_runaway_records() -> None:
    assembler = RecordAssembler(max_lines=3)
    out = [assembler.feed(line) for line in ["Traceback (most recent call last):"] + ["  x"] * 4]
    assert [len(r.lines) for r in out if r is not None] == [3]
    last = assembler.flush()
    assert last is not None and len(last.lines) == 2


# --- chunk scanner: the same records as the assembler, whatever the chunking --------------

_P = "(EngineCore_DP0 pid=7) "
_H = "(APIServer pid=1) ERROR 11-24 00:00:00 [x.py:1] "
_LINE_KINDS = [
    'INFO:     127.0.0.1:1 - "GET /health HTTP/1.1" 200 OK\n',
    "(APIServer pid=1) INFO 11-24 00:00:00 [loggers.py:1] Avg prompt throughput: 1.0\n",
    f"{_H}HIT failed\r\n",
    f"{_H}Traceback (most recent call last):\r\n",
    f'{_H}  File "x.py", line 1\r\n',
    f"{_H}ValueError: HIT\n",
    "Traceback (most recent call last):\n",
    '  File "y.py", line 2, in f\n',
    "    raise HIT\n",
    "RuntimeError: HIT here\n",
    "\n",
    "During handling of the above exception, another exception occurred:\n",
    "Process EngineCore_DP0:\n",
    f"{_P}Traceback (most recent call last):\n",
    f"{_P}  File HIT\n",
    f"{_P}ValueError: x\n",
    "plain HIT line\n",
    "ERROR:    Exception in ASGI application\n",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_LINE_KINDS), max_size=60),
    st.lists(st.integers(min_value=1, max_value=200), max_size=30),
    st.booleans(),
    st.integers(min_value=1, max_value=64),
)
def test_scanner_records_match_assembler(
    kinds: list[str], cuts: list[int], tail: bool, window: int
) -> None:
    text = "".join(kinds) + ("partial HIT" if tail else "")
    expected = [r for r in assemble(text.split("\n")) if "HIT" in r.message]
    if not tail and expected and text.endswith("\n"):
        # split() leaves a final "" that the assembler takes for a blank continuation line
        expected = [r for r in assemble(text.split("\n")[:-1]) if "HIT" in r.message]
    data = text.encode()
    # small windows of the anchor search: anchors across window borders are still found
    scanner = ChunkScanner([b"HIT", b"HIT here"], window=window)
    found = []
    pos = 0
    for size in cuts:
        found += scanner.feed(data[pos : pos + size])
        pos += size
    found += scanner.feed(data[pos:])
    found += scanner.flush(final=True)
    assert [h.record for h in found] == expected
    for hit in found:
        assert hit.complete
        assert all("HIT" in hit.record.lines[i] for i in hit.hit_lines)


def test_scanner_reports_open_record_once_flushed_then_completed() -> None:
    scanner = ChunkScanner([b"EngineDeadError"])
    head = f"{_H}AsyncLLM output_handler failed.\r\n{_H}EngineDeadError: x\r\n"
    assert scanner.feed(head.encode()) == []  # the record may go on
    assert scanner.pending
    [early] = scanner.flush()
    assert not early.complete and len(early.record.lines) == 2
    [late] = scanner.feed(f"{_H}more\nINFO:     next\n".encode())
    assert late.complete and late.serial == early.serial and len(late.record.lines) == 3
    assert not scanner.pending


def test_scanner_cuts_long_lines_before_parsing_and_counts_them() -> None:
    scanner = ChunkScanner([b"HIT"], max_line=100)
    long_line = f"{_H}HIT " + "x" * 10_000 + " HIT"
    data = (long_line + "\n" + "INFO:     next\n").encode()
    [hit] = scanner.feed(data[:5000]) + scanner.feed(data[5000:])
    [parsed] = hit.hits
    assert parsed.cut == len(long_line) and len(parsed.raw) == 100
    assert parsed.message.startswith("HIT x") and hit.record.lines == (parsed.raw,)
    assert scanner.cut_lines == 1


def test_a_line_full_of_anchors_is_one_hit() -> None:
    scanner = ChunkScanner([b"HIT"], window=1000)
    [hit] = scanner.feed(b"HIT" * 300_000 + b"\nINFO:     next\n")
    assert hit.hit_lines == (0,) and hit.hits[0].cut == 900_000


def test_headed_never_reads_past_the_line_end() -> None:
    # Ray's ", ip=..." part once matched across the newline, so `headed` took this line for
    # a new record while `split_line` sees no header: the scanner cut the traceback there.
    ray = "(RayWorkerWrapper pid=9, ip=10.0.0.2 HIT"
    text = (
        f"Traceback (most recent call last):\n  File x\n{ray}\n) INFO 11-24 00:00:00 [w.py:1] y\n"
    )
    data = text.encode()
    assert not headed(data, data.index(b"(Ray"))
    assert split_line(ray).level is None and split_line(ray).header is None
    scanner = ChunkScanner([b"HIT"])
    [found] = scanner.feed(data) + scanner.flush(final=True)
    assert found.record.lines == tuple(text.split("\n")[:3])
    assert [found.record] == [r for r in assemble(text.split("\n")[:-1]) if "HIT" in r.message]


# --- long records: each line walked once, one line per feed as in one feed -----------------


def _long_traceback(frames: int, kind: str) -> list[bytes]:
    """A traceback record of `frames` frame lines, then the next record. `kind`: "raw"
    (unformatted, a hit on the first line), "tail" (raw, a hit on the exception line only),
    "hits" (raw, every line a hit), "formatted" (NewLineFormatter: the header on every
    line, all but the last ending with "\r"; a hit on the first line)."""
    head, end = ("", "\n") if kind != "formatted" else (_H, "\r\n")
    hit = "" if kind == "tail" else "HIT "
    frame_hit = " HIT" if kind == "hits" else ""
    lines = [f"{head or 'ERROR 11-24 00:00:00 [x.py:1] '}{hit}failed:{end}"]
    lines.append(f"{head}Traceback (most recent call last):{end}")
    lines += [f'{head}  File "f{i}.py", line {i}, in g{frame_hit}{end}' for i in range(frames)]
    lines += [f"{head}ValueError: {'HIT' if kind == 'tail' else 'x'}\n", "INFO:     next\n"]
    return [line.encode() for line in lines]


def _scan(chunks: list[bytes], max_walk: int = 2000) -> tuple[list[LogRecord], ChunkScanner]:
    scanner = ChunkScanner([b"HIT"], max_walk=max_walk)
    found = [hit for chunk in chunks for hit in scanner.feed(chunk)]
    found += scanner.flush(final=True)
    for hit in found:
        assert hit.hit_lines and all("HIT" in hit.record.lines[i] for i in hit.hit_lines)
    return [hit.record for hit in found], scanner


def _assembled(data: bytes, max_walk: int = 2000) -> list[LogRecord]:
    """The records with a hit, as `RecordAssembler` cuts them at `max_walk` lines."""
    assembler = RecordAssembler(max_lines=max_walk)
    records = [assembler.feed(line) for line in data.decode().split("\n")[:-1]]
    return [r for r in [*records, assembler.flush()] if r is not None and "HIT" in r.message]


_KINDS = ["raw", "tail", "hits", "formatted"]


@pytest.mark.parametrize("kind", _KINDS)
def test_a_long_record_fed_one_line_per_read_parses_each_line_about_once(kind: str) -> None:
    # Beyond max_walk (2000) lines, so the record is cut and its tail walked on as a new one.
    lines = _long_traceback(4000, kind)
    found, scanner = _scan(lines)
    assert scanner.parsed_lines <= 3 * len(lines)  # was about n * 1000 when re-walked per feed
    assert found == _assembled(b"".join(lines))


@pytest.mark.parametrize("frames", [1998, 2500])
@pytest.mark.parametrize("kind", _KINDS)
def test_a_long_record_is_the_same_whether_fed_by_line_or_at_once(kind: str, frames: int) -> None:
    lines = _long_traceback(frames, kind)
    expected = _assembled(b"".join(lines))
    assert expected and _scan(lines)[0] == expected
    assert _scan([b"".join(lines)])[0] == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 30)), min_size=1, max_size=5),
    st.lists(st.sampled_from(_LINE_KINDS), max_size=10),
    st.integers(min_value=2, max_value=12),
    st.lists(st.integers(min_value=1, max_value=300), max_size=20),
)
def test_records_cut_at_max_walk_match_the_assembler_whatever_the_chunking(
    tracebacks: list[tuple[str, int]], between: list[str], max_walk: int, cuts: list[int]
) -> None:
    lines: list[bytes] = []
    for n, (kind, frames) in enumerate(tracebacks):
        lines += _long_traceback(frames, kind) + [k.encode() for k in between[n::2]]
    data = b"".join(lines)
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(data[pos : pos + size])
        pos += size
    expected = _assembled(data, max_walk)
    for feeds in (lines, [data], [*chunks, data[pos:]]):
        assert _scan(feeds, max_walk)[0] == expected


# --- the logging config we give vLLM ------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "logger"),
    [
        ("0.10.0", "vllm.entrypoints.openai.protocol"),
        ("0.14.1", "vllm.entrypoints.openai.protocol"),
        ("0.15.0", "vllm.entrypoints.openai.engine.protocol"),
        ("0.17.1", "vllm.entrypoints.openai.engine.protocol"),
        ("0.18.0", "vllm.entrypoints.openai.engine.protocol"),
        ("0.28.0", "vllm.entrypoints.openai.engine.protocol"),
        ("0.29.0", "vllm.entrypoints.serve.engine.protocol"),
        ("0.32.0+cpu", "vllm.entrypoints.serve.engine.protocol"),
        ("v0.40.0", "vllm.entrypoints.serve.engine.protocol"),
    ],
)
def test_ignored_fields_logger(version: str, logger: str) -> None:
    assert ignored_fields_logger_for(Version.parse(version)) == logger
    config = logging_config_for(Version.parse(version))
    assert config["loggers"][logger] == {"level": "DEBUG"}
    assert config["loggers"]["vllm"]["level"] == "INFO"
    assert config["handlers"]["vllm"]["level"] == "DEBUG"
    json.dumps(config)


def test_prefix_only_where_the_formatter_makes_it() -> None:
    old = logging_config_for(Version(0, 30, 0))["formatters"]["vllm"]["format"]
    new = logging_config_for(Version(0, 31, 0))["formatters"]["vllm"]["format"]
    assert old == "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
    assert new == "(%(vllm_process_name)s pid=%(process)d) " + old


def test_version_parse_reads_vllm_version_texts_and_rejects_garbage() -> None:
    assert Version.parse("0.10.1.1") == Version(0, 10, 1)
    assert Version.parse("v0.11.0rc1") == Version.parse("0.11.0+cpu") == Version(0, 11, 0)
    with pytest.raises(ValueError, match="not a version number"):
        Version.parse("latest")
