"""What a person and the journal get from a real supervisor on the fake vLLM: journal
priorities that list only the trouble, and stdout and stderr on one terminal-like file that
never glue a record to a vLLM line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from fault_supervisor import Launcher, assert_nothing_left, make_config, stop
from harness import SupervisorRun, notify_socket, stop_supervisor, wait_for


def trouble(run: SupervisorRun) -> list[dict[str, str]]:
    """The records `journalctl -p warning` would list: priority 4 (warning) or more urgent."""
    records = run.events()
    assert records and all("priority" in record for record in records), run.stderr()
    return [record for record in records if int(record["priority"]) <= 4]


def test_journal_priorities_list_a_clients_mistake_and_nothing_of_start_or_stop(
    supervise: Launcher,
) -> None:
    run = supervise("load_seconds=0.2", supervisor__log__format="logfmt")
    run.wait_state("READY", 20)
    port = int(yaml.safe_load(run.config.read_text())["server"]["port"])
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "lora_name": "a"}
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=10, trust_env=False
    )
    assert answer.status_code == 200
    wait_for(
        lambda: run.event("vllm_event", rule="ignored_request_fields"), 10, "the ignored field"
    )
    assert stop(run) == 0
    assert run.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    assert [(r["event"], r.get("rule"), r["priority"]) for r in trouble(run)] == [
        ("vllm_event", "ignored_request_fields", "4")
    ]
    assert_nothing_left(run)


def test_a_crash_is_in_the_journal_at_error_priority(supervise: Launcher) -> None:
    run = supervise("load_seconds=0.2,crash_after=0.5")
    wait_for(lambda: run.event("crash_report"), 30, "the crash report")
    assert stop(run) == 0
    report = run.event("crash_report")
    assert report is not None and int(report["priority"]) <= 3  # error or worse
    assert "Traceback" in report["last_lines"]
    listed = {record["event"] for record in trouble(run)}
    assert {"crash_report", "vllm_exited"} <= listed
    assert_nothing_left(run)


_RECORD = r"(?:\d\d:\d\d:\d\d (?:debug|info|warning|error|critical) |timestamp=\S+ level=)"


def test_records_and_vllm_lines_never_glue_on_one_unbuffered_terminal(tmp_path: Path) -> None:
    # As on a terminal: stdout and stderr are one file, Python unbuffered, vLLM's lines echoed
    # while the supervisor logs its start, the fake writing every line in two halves.
    lines = 3000
    config = make_config(
        tmp_path, f"load_seconds=2,chatty_lines={lines}", supervisor__log__echo=True
    )
    both = tmp_path / "terminal.log"
    with notify_socket(tmp_path) as notify:
        environ = {"NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
        with both.open("wb") as terminal:
            process = subprocess.Popen(
                [sys.executable, "-m", "niodoo_supervisor", "run", "-c", str(config)],
                stdout=terminal,
                stderr=terminal,
                stdin=subprocess.DEVNULL,
                env={**_inherited(), **environ},
            )
        run = SupervisorRun(config, tmp_path / "state", notify, process, both, both)
        try:
            wait_for(lambda: notify.first("READY", "1"), 60, "READY=1")
            wait_for(lambda: both.read_text().count("chatty line") >= lines, 60, "the chatter")
            process.send_signal(signal.SIGTERM)
            assert run.wait_exit(30) == 0
        finally:
            stop_supervisor(run)
    text = both.read_text(errors="replace").splitlines()
    records = [line for line in text if re.match(_RECORD, line)]
    assert len(records) >= 5, text[:50]
    # Every other line is one of vLLM's, whole: the vLLM log file holds the same lines. (The
    # fake's processes share one pipe and may interleave inside it, as vLLM's do: the log
    # file has those lines alike.)
    vllm_lines = (tmp_path / "state" / "vllm.log").read_text(errors="replace").splitlines()
    echoed = [line for line in text if not re.match(_RECORD, line)]
    assert len(vllm_lines) > lines
    glued = [line for line in echoed if re.search(_RECORD, line)]
    assert not glued, f"{len(glued)} records glued to vLLM's lines, e.g. {glued[:3]}"
    assert echoed == vllm_lines


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NO_COLOR")}
