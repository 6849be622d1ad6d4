"""`check` shows every problem at once: preflight runs on the keys that are valid even when
others are not, and only the checks that read a wrong key are skipped (one note each). A port
taken by this state folder's own recorded vLLM is a note, not an error; nothing else is."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.supervise import run_record
from niodoo_supervisor.supervise.process_tree import ProcessRecord

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"
_LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(120)\n"
)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)


def _document(tmp_path: Path, port: int) -> dict[str, Any]:
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (tmp_path / "state").mkdir(exist_ok=True)
    return {
        "server": {
            "python": sys.executable,
            "env": {"PYTHONPATH": str(FAKE_VLLM)},
            "host": "127.0.0.1",
            "port": port,
        },
        "model": {"path": str(model)},
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }


def _adapter(path: Path, rank: int) -> str:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": "base"})
    )
    (path / "adapter_model.safetensors").write_bytes(b"\0")
    return str(path)


def _check(
    tmp_path: Path, document: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    path = tmp_path / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    code = main(["check", "-c", str(path)])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out.splitlines()


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def other_session_listener() -> Iterator[tuple[int, int]]:
    """A process in its own session listening on a port, as vLLM does: (pid, port)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _LISTEN], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield child.pid, port
    finally:
        child.kill()
        child.wait()


def _record_as_ours(state_dir: Path, pid: int, **changed: Any) -> None:
    process = psutil.Process(pid)
    leader = ProcessRecord(pid, process.create_time(), process.name(), process.exe())
    record = run_record.RunRecord(
        os.getpid(), pid, leader, supervisor_create_time=psutil.Process().create_time()
    )
    fields = {**json.loads(json.dumps(record.__dict__, default=lambda o: o.__dict__)), **changed}
    (state_dir / run_record.FILE_NAME).write_text(json.dumps(fields))


def test_errors_of_every_stage_are_reported_in_one_run(
    tmp_path: Path, listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path, listener)  # the port is taken by this test
    document["engine"] = {"max_num_seqs": "many"}  # a key's type: validation
    document["lora"] = {
        "enabled": True,
        "max_lora_rank": 8,
        "adapters": [
            {"name": "gone", "path": str(tmp_path / "adapters" / "gone")},  # preflight: a file
            {"name": "big", "path": _adapter(tmp_path / "adapters" / "big", 16)},  # the rank
        ],
    }
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    text = "\n".join(out)
    assert ": error: engine.max_num_seqs: must be an integer" in text
    assert ": error: lora.adapters[0].path: " in text
    assert (
        ": error: lora.adapters[1]: adapter 'big' has rank 16, above lora.max_lora_rank 8" in text
    )
    assert f": error: server.port: port {listener} on 127.0.0.1 is already in use by " in text
    assert out[-1].endswith(": 4 error(s), 1 warning(s): vLLM would not start with this config"), (
        out
    )


def test_only_the_checks_reading_a_wrong_key_are_skipped_and_say_so(
    tmp_path: Path, listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path, listener)
    document["server"]["python"] = ["not", "a", "path"]  # a required key, wrong
    document["model"]["path"] = str(tmp_path / "no-model")  # still checked
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    text = "\n".join(out)
    assert ": error: server.python: " in text
    assert ": error: model.path: " in text
    assert f": error: server.port: port {listener} " in text
    notes = [line.split(": note: ")[1] for line in out if ": note: " in line]
    assert notes == [
        "not checked: the installed vLLM, because server.python has an error above",
        "not checked: whether the port's listener is our own vLLM, because server.python has "
        "an error above",
    ]


def test_a_wrong_model_path_says_the_adapters_fit_was_not_checked(
    tmp_path: Path, listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path, listener)
    document["model"]["path"] = ["not", "a", "path"]
    document["lora"] = {
        "enabled": True,
        "adapters": [{"name": "fine", "path": _adapter(tmp_path / "adapters" / "fine", 8)}],
    }
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    notes = [line.split(": note: ")[1] for line in out if ": note: " in line]
    fit = [note for note in notes if note.startswith("not checked: the adapters' fit")]
    assert fit == [
        "not checked: the adapters' fit with the model (their base model, modules and shapes), "
        "because model.path has an error above"
    ]


@pytest.mark.parametrize("wrong", ["supervisor.state_dir", "server.python"])
def test_a_wrong_key_naming_our_vllm_never_makes_the_port_fine(
    tmp_path: Path,
    other_session_listener: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    wrong: str,
) -> None:
    pid, port = other_session_listener
    document = _document(tmp_path, port)
    _record_as_ours(tmp_path / "state", pid)
    section, key = wrong.split(".")
    document[section][key] = ["not", "a", "path"]
    if wrong == "supervisor.state_dir":
        # The wrong key stands at its default in the partial config: here the folder of
        # another supervisor, whose record names the listener.
        monkeypatch.setattr(Config, "state_dir", property(lambda _: tmp_path / "state"))
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    assert any(
        f"error: server.port: port {port} on 127.0.0.1 is already in use" in line for line in out
    ), out
    assert not any("own vLLM (pid" in line for line in out)
    assert any(
        line.endswith(
            f"note: not checked: whether the port's listener is our own vLLM, because {wrong} "
            "has an error above"
        )
        for line in out
    ), out


def test_a_wrong_port_skips_only_the_port_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path, 1)
    document["server"]["port"] = "eighty"
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    assert any(": error: server.port: must be an integer" in line for line in out)
    assert any(
        line.endswith("note: not checked: the port, because server.port has an error above")
        for line in out
    )
    assert out[-1].endswith(": 1 error(s), 0 warning(s): vLLM would not start with this config")


def test_a_port_held_by_our_recorded_vllm_is_a_note_and_check_passes(
    tmp_path: Path, other_session_listener: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    pid, port = other_session_listener
    document = _document(tmp_path, port)
    _record_as_ours(tmp_path / "state", pid)
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.OK, out
    assert any(
        f"note: port {port} is served by this supervisor's own vLLM (pid {pid}, running since "
        in line
        for line in out
    )
    assert out[-1].startswith(f"{tmp_path / 'niodoo.yaml'}: ok (0 warning(s))")


@pytest.mark.parametrize(
    "damage",
    ["another start time", "another executable", "not json", "a symlink", "another listener"],
)
def test_a_record_that_does_not_name_the_listener_never_makes_the_port_fine(
    tmp_path: Path,
    other_session_listener: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    pid, port = other_session_listener
    state = tmp_path / "state"
    document = _document(tmp_path, port)
    _record_as_ours(state, pid)
    record_path = state / run_record.FILE_NAME
    if damage == "another start time":
        _record_as_ours(
            state, pid, leader={**json.loads(record_path.read_text())["leader"], "create_time": 1}
        )
    elif damage == "another executable":
        document["server"]["python"] = "/bin/sh"
    elif damage == "not json":
        record_path.write_text('{"leader": ')
    elif damage == "a symlink":
        real = tmp_path / "elsewhere.json"
        real.write_text(record_path.read_text())
        record_path.unlink()
        record_path.symlink_to(real)
    elif damage == "another listener":
        _record_as_ours(state, os.getpid())  # a record of a process that is not the listener
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    assert any(
        f"error: server.port: port {port} on 127.0.0.1 is already in use" in line for line in out
    )
    assert not any("own vLLM" in line for line in out)


def test_a_relation_between_valid_keys_hides_no_check_of_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NIODOO_TEST_UNSET_PORT", raising=False)
    document = _document(tmp_path, 1)
    document["server"]["port"] = "${NIODOO_TEST_UNSET_PORT}"  # left out before validation
    document["lora"] = {
        "enabled": True,
        "max_loras": 4,
        "max_cpu_loras": 2,  # below max_loras: a relation
        "adapters": [{"name": "gone", "path": str(tmp_path / "gone")}],
    }
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    text = "\n".join(out)
    assert ": error: lora.max_cpu_loras: max_cpu_loras (2) must be >= max_loras (4)" in text
    assert ": error: lora.adapters[0].path: " in text
    assert ": error: server.port: " in text
    notes = [line.split(": note: ")[1] for line in out if ": note: " in line]
    assert notes == ["not checked: the port, because server.port has an error above"]


def test_a_listener_this_user_cannot_see_is_still_an_error_saying_so(
    tmp_path: Path,
    other_session_listener: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another user's process, seen without root: the socket is listed without its pid.
    def hidden(kind: str = "inet") -> list[Any]:
        raise psutil.AccessDenied()

    pid, port = other_session_listener
    document = _document(tmp_path, port)
    _record_as_ours(tmp_path / "state", pid)  # even a valid record cannot vouch for it
    monkeypatch.setattr("niodoo_supervisor.launch.ports.psutil.net_connections", hidden)
    code, out = _check(tmp_path, document, capsys)
    assert code == exitcodes.CONFIG
    assert any(
        f"error: server.port: port {port} on 127.0.0.1 is already in use by a process this "
        "user cannot see (run check as its user or root to name it)" in line
        for line in out
    ), out
