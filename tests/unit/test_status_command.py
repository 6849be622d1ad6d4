"""`niodoo-supervisor status`: "running" means the supervisor that wrote the status file, known
by its pid and its start time; a live process that merely has that pid (reused) is not it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.supervise.status_file import STATUS_FILE, StatusBoard

OWN_START = psutil.Process().create_time()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "state").mkdir()
    path = tmp_path / "niodoo.yaml"
    document = {
        "server": {"python": sys.executable},
        "model": {"path": str(model)},
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def _status(
    config: Path, capsys: pytest.CaptureFixture[str], **fields: Any
) -> tuple[int, dict[str, Any]]:
    board = StatusBoard(state="READY")
    (config.parent / "state" / STATUS_FILE).write_text(json.dumps({**board.to_dict(), **fields}))
    code = main(["status", "-c", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_status_file_records_the_supervisors_start_time() -> None:
    board = StatusBoard()
    assert board.supervisor_pid == os.getpid()
    assert board.supervisor_create_time == OWN_START


def test_the_writer_alive_with_its_start_time_is_running(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown = _status(config, capsys)  # written by this process: pid and start time match
    assert code == exitcodes.OK and shown["supervisor_running"] is True


def test_a_live_pid_with_another_start_time_is_not_running(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # This test's own pid is alive, but the file says it started a minute earlier: the pid
    # was reused by another process.
    code, shown = _status(config, capsys, supervisor_create_time=OWN_START - 60)
    assert code == exitcodes.NOT_RUNNING and shown["supervisor_running"] is False


@pytest.mark.parametrize("create_time", [None, "yesterday", True])
def test_a_file_without_a_usable_start_time_is_not_running(
    config: Path, capsys: pytest.CaptureFixture[str], create_time: object
) -> None:
    code, shown = _status(config, capsys, supervisor_create_time=create_time)
    assert code == exitcodes.NOT_RUNNING and shown["supervisor_running"] is False


def test_the_human_view_says_not_running_and_the_last_state(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {**StatusBoard(state="READY").to_dict(), "supervisor_create_time": OWN_START - 60}
    (config.parent / "state" / STATUS_FILE).write_text(json.dumps(status))
    assert main(["status", "-c", str(config)]) == exitcodes.NOT_RUNNING
    note, state = capsys.readouterr().out.splitlines()[:2]
    assert note.startswith("note:      daemon not answering (no control socket at ")
    assert "from status.json written at" in note
    assert state.startswith("state:     not running (last state READY)")


def test_the_human_view_marks_an_adapter_loaded_live_only(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = StatusBoard(state="READY", adapters=["a", "extra"], adapters_live_only=["extra"])
    status = {**board.to_dict(), "supervisor_create_time": OWN_START - 60}
    (config.parent / "state" / STATUS_FILE).write_text(json.dumps(status))
    main(["status", "-c", str(config)])
    assert "+ adapters a, extra (live only, not in the YAML)" in capsys.readouterr().out


def test_the_human_view_marks_an_adapter_without_effect(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    effects = {"a": {"verdict": "effect", "at": 1.0}, "u": {"verdict": "no_effect", "at": 1.0}}
    board = StatusBoard(state="READY", adapters=["a", "u"], adapter_effects=effects)
    status = {**board.to_dict(), "supervisor_create_time": OWN_START - 60}
    (config.parent / "state" / STATUS_FILE).write_text(json.dumps(status))
    main(["status", "-c", str(config)])
    out = capsys.readouterr().out
    assert "+ adapters a, u (NO EFFECT: serves the base model's output)" in out


def test_the_human_view_shows_a_pending_restart_the_windows_and_a_drain(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = 1_700_000_000.0
    board = StatusBoard(
        state="READY",
        last_check={"at": now, "ok": True, "reason": "ok", "latency_s": 0.0123},
        pending_restart={
            "at": "2023-11-15T02:00:00+01:00",
            "window": "sun 02:00-04:00 Europe/Berlin",
            "reason": "config changed: model.max_model_len",
        },
        maintenance={"open_now": False, "next_opening": "2023-11-15T02:00:00+01:00"},
        drain={"since": now, "phase": "draining", "running": 3, "waiting": 1, "timeout": 30},
    )
    status = {**board.to_dict(), "supervisor_create_time": OWN_START - 60}
    (config.parent / "state" / STATUS_FILE).write_text(json.dumps(status))
    main(["status", "-c", str(config)])
    out = capsys.readouterr().out
    assert "last check: ok at 2023-11-14 " in out and " ago in 0.0123s" in out
    assert (
        "pending:   restart at 2023-11-15T02:00:00+01:00 (sun 02:00-04:00 Europe/Berlin): "
        "config changed: model.max_model_len"
    ) in out
    assert "windows:   closed now; next opening 2023-11-15T02:00:00+01:00" in out
    assert "draining:  draining for " in out and ": 3 running, 1 waiting (timeout 30s)" in out
