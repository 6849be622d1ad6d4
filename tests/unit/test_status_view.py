"""`status` for a person: the most important first, events grouped with their last time,
no `pid None`, truncation marked; a damaged or hostile status.json is one line naming the
file and the fix, exit 3, never a traceback or `internal error`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.cli.status_fields import checked
from niodoo_supervisor.cli.status_view import human
from niodoo_supervisor.cli.times import at_and_ago, duration
from niodoo_supervisor.supervise.status_file import STATUS_FILE, StatusBoard

OWN_START = psutil.Process().create_time()
NOW = 1_800_000_000.0


def _status(state_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["status", "--state-dir", str(state_dir), *args])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out


def _board(**fields: Any) -> dict[str, Any]:
    """A status written by a supervisor that is gone (this pid, another start time)."""
    written = StatusBoard(state="READY").to_dict()
    return {**written, "supervisor_create_time": OWN_START - 60, **fields}


# --- a damaged or hostile status.json ----------------------------------------------------------


def _plant(path: Path, damage: str) -> None:
    if damage == "cut short":
        path.write_text(json.dumps(_board())[:300])
    elif damage == "not JSON":
        path.write_bytes(b"\x00\xff garbage")
    elif damage == "not an object":
        path.write_text("[1, 2, 3]")
    elif damage == "huge":
        with path.open("wb") as out:
            out.truncate(9 << 20)  # sparse: over the limit without writing 9 MiB
    elif damage == "nested deeply":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "a symlink":
        target = path.parent / "elsewhere.json"
        target.write_text(json.dumps(_board()))
        path.symlink_to(target)
    elif damage == "a FIFO":
        os.mkfifo(path)
    elif damage == "a folder":
        path.mkdir()


@pytest.mark.parametrize(
    "damage",
    [
        "cut short",
        "not JSON",
        "not an object",
        "huge",
        "nested deeply",
        "a symlink",
        "a FIFO",
        "a folder",
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_a_damaged_status_file_is_one_line_naming_it_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, as_json: bool
) -> None:
    path = tmp_path / STATUS_FILE
    _plant(path, damage)
    code, out = _status(tmp_path, capsys, *(["--json"] if as_json else []))
    assert code == exitcodes.NOT_RUNNING
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("not running: no control socket at ")
    assert str(path) in lines[0]
    assert "remove it" in lines[0]


_ODD_VALUES: list[object] = [None, "x", -1, 1e308, True, [], {}, [1, {"a": None}], 10**30]
# Nested places the view reads, as (field, key in it) and (field, name, key in that).
_NESTED = [
    ("last_check", "at"),
    ("last_check", "latency_s"),
    ("last_crash", "at"),
    ("last_crash", "lines"),
    ("last_reload", "problems"),
    ("last_reload", "at"),
    ("drain", "since"),
    ("pending_restart", "at"),
    ("events", "rules"),
    ("events", "ignored_fields"),
    ("events", "ignored_fields_last"),
    ("events", "unknown_models"),
]


def test_any_value_anywhere_renders_printable_lines() -> None:
    base = _realistic()
    base.update(
        last_reload={"at": NOW, "ok": False, "problems": ["p"]},
        drain={"since": NOW, "phase": "draining"},
        pending_restart={"at": "x", "window": "w", "reason": "r"},
    )
    variants: list[dict[str, Any]] = []
    for odd in _ODD_VALUES:
        variants += [{**base, field: odd} for field in base]
        variants += [{**base, field: {**base[field], key: odd}} for field, key in _NESTED]
        rules = base["events"]["rules"]
        variants += [
            {**base, "events": {**base["events"], "rules": {**rules, "engine_dead": odd}}},
            {
                **base,
                "events": {**base["events"], "rules": {"r": {"count": odd, "last_time": odd}}},
            },
            {**base, "adapter_effects": {"a": odd}, "adapters": ["a", odd]},
        ]
    for status in variants:
        readable, _ = checked(status)
        for running in (True, False):
            assert all(line.isprintable() for line in human(readable, running, NOW)), status


def test_odd_supervisor_pids_and_start_times_read_as_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for odd in _ODD_VALUES:
        for field in ("supervisor_pid", "supervisor_create_time"):
            (tmp_path / STATUS_FILE).write_text(json.dumps(_board(**{field: odd})))
            code, out = _status(tmp_path, capsys)
            assert code == exitcodes.NOT_RUNNING, (field, odd, out)


def test_fields_of_a_wrong_type_are_named_and_the_rest_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = _board(since="yesterday", events=["x"], vllm_pid="None", served_model="tiny")
    (tmp_path / STATUS_FILE).write_text(json.dumps(board))
    code, out = _status(tmp_path, capsys)
    assert code == exitcodes.NOT_RUNNING
    assert (
        "note:      left out, not of the type the supervisor writes: events, since, vllm_pid" in out
    )
    assert "serving:   tiny + adapters (none)" in out


# --- the view ---------------------------------------------------------------------------------


def _rule(count: int, at: float, line: str) -> dict[str, Any]:
    return {"count": count, "last_time": at, "last_line": line}


def _realistic() -> dict[str, Any]:
    return _board(
        since=NOW - 300,
        reason="ready after 61.2s",
        vllm_pid=4242,
        vllm_version="0.32.0",
        served_model="tiny",
        adapters=["a", "b"],
        starts=2,
        restarts=1,
        last_exit="exited with code 1",
        last_check={"at": NOW - 3, "ok": True, "reason": "ok", "latency_s": 0.012},
        events={
            "rules": {
                "engine_dead": _rule(
                    1, NOW - 400, "ERROR [core.py:1] EngineDeadError: " + "x" * 300
                ),
                "ignored_request_fields": _rule(
                    3, NOW - 60, "The following fields ... {'lora_name'}"
                ),
                "weights_loaded": _rule(2, NOW - 320, "Loading weights took 0.21 seconds"),
                "listening": _rule(2, NOW - 310, "Starting vLLM server on http://127.0.0.1:8000"),
            },
            "ignored_fields": {"lora_name": 3},
            "ignored_fields_last": {"lora_name": NOW - 60},
        },
        last_crash={
            "at": NOW - 900,
            "reason": "vLLM exited with code 1",
            "rule": None,
            "lines": ["Traceback (most recent call last):", "RuntimeError: boom \x1b[31m"],
        },
    )


def test_the_most_important_comes_first() -> None:
    lines = human(_realistic(), True, NOW)
    since = at_and_ago(NOW - 300, NOW)
    assert lines[0] == f"state:     READY since {since}: ready after 61.2s"
    assert since.endswith(", 5 min ago")
    assert lines[1] == "serving:   tiny + adapters a, b"
    assert lines[2] == f"trouble:   {at_and_ago(NOW - 400, NOW)}: engine_dead x1"
    assert lines[3].startswith("requests:  3 requests sent lora_name")
    assert (
        lines[4]
        == "vLLM:      pid 4242; version 0.32.0; 2 start(s), 1 restart(s); last exit: exited with code 1"
    )
    assert lines[5] == f"last check: ok at {at_and_ago(NOW - 3, NOW)} in 0.012s"


def test_events_are_grouped_with_their_last_time_and_cut_lines_are_marked() -> None:
    lines = human(_realistic(), True, NOW)
    events = [line for line in lines if line.startswith(("events:", " " * 11))]
    assert events[0].startswith(
        f"events:    engine_dead x1, last {at_and_ago(NOW - 400, NOW)}: ERROR"
    )
    assert events[0].endswith("…") and len(events[0]) < 200
    assert events[1].startswith("           ignored_request_fields x3, last ")
    assert events[2] == (
        f"           info: weights_loaded x2, listening x2 (last {at_and_ago(NOW - 310, NOW)})"
    )


def test_no_pid_none_and_control_characters_are_escaped() -> None:
    status = _realistic()
    status["vllm_pid"] = None
    lines = human(status, False, NOW)
    assert lines[0].startswith("state:     not running (last state READY) since ")
    assert any(line.startswith("vLLM:      not running; version 0.32.0;") for line in lines)
    assert not any("None" in line for line in lines)
    assert lines[-1] == "            RuntimeError: boom \\x1b[31m"
    assert all(line.isprintable() for line in lines)


def test_nothing_wrong_says_so() -> None:
    lines = human(_board(since=NOW - 5), True, NOW)
    assert lines[2] == "trouble:   none recorded"
    assert "vLLM:      not running; version unknown; 0 start(s), 0 restart(s)" in lines


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (5, "5s"),
        (59.4, "59s"),
        (300, "5 min"),
        (3 * 3600 + 20 * 60, "3 h 20 min"),
        (50 * 3600, "2 days 2 h"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds: float, said: str) -> None:
    assert duration(seconds) == said


def test_times_of_today_are_the_clock_and_older_ones_have_the_date() -> None:
    now = time.time()
    assert (
        at_and_ago(now - 65, now)
        == f"{time.strftime('%H:%M:%S', time.localtime(now - 65))}, 1 min ago"
    )
    assert at_and_ago(now - 3 * 86400, now).count("-") == 2
    assert at_and_ago(float("nan"), now) == "unknown time"


def test_json_output_is_the_status_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = _realistic()
    (tmp_path / STATUS_FILE).write_text(json.dumps(board))
    _, out = _status(tmp_path, capsys, "--json")
    shown = json.loads(out)
    assert {key: shown[key] for key in board} == json.loads(json.dumps(board))
    assert shown["source"] == STATUS_FILE and shown["supervisor_running"] is False


def test_a_start_under_way_names_its_phase() -> None:
    status = _board(state="STARTING", since=NOW - 20, phase="loading_weights", reason="")
    line = human(status, True, NOW)[0]
    assert line == f"state:     STARTING since {at_and_ago(NOW - 20, NOW)} (phase loading_weights)"
