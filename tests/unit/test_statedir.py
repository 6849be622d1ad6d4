"""The state folder and what lies in it are not trusted: the folder's owner and mode, the
lock, the state file's types, and which processes a record may get ended. Processes are real
(strangers in sessions of their own) and always cleaned up; no signal is ever sent here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.files.statedir import LOCK_FILE, StateDirError, StateLock, prepare
from niodoo_supervisor.supervise import run_record
from niodoo_supervisor.supervise.leftovers import end_leftovers
from niodoo_supervisor.supervise.process_tree import ProcessRecord, protected_pids

# --- the folder -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_an_absent_state_folder_is_created_0750_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    state = tmp_path / "var" / "state"
    old = os.umask(umask)
    try:
        prepare(state, state / "vllm.log")
    finally:
        os.umask(old)
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o770, "its group"), (0o757, "every user"), (0o777, "its group and every user")],
)
def test_a_state_folder_others_can_write_is_refused_naming_the_fix(
    tmp_path: Path, mode: int, who: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(StateDirError) as refused:
        prepare(state, state / "vllm.log")
    assert refused.value.exit_code == exitcodes.CONFIG
    assert str(refused.value) == (
        f"supervisor.state_dir: {state} is writable by {who} (mode {mode:04o}), who could "
        f"steer what the supervisor ends and what vLLM runs; fix: chmod go-w {state}"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_state_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, 65534, 65534)
    with pytest.raises(StateDirError) as refused:
        prepare(state, state / "vllm.log")
    assert refused.value.exit_code == exitcodes.CONFIG
    assert "is owned by nobody, not by root that runs the supervisor" in str(refused.value)
    assert str(refused.value).endswith(f"fix: chown root {state}")


def test_a_log_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "vllm.log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateDirError) as refused:
        prepare(state, state / "vllm.log")
    assert refused.value.exit_code == exitcodes.CONFIG
    assert str(refused.value).startswith(f"supervisor.log.path: {state / 'vllm.log'} is a symbolic")


def test_a_state_folder_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateDirError) as refused:
        prepare(tmp_path / "file" / "state", tmp_path / "file" / "state" / "vllm.log")
    assert refused.value.exit_code == exitcodes.CONFIG
    assert "cannot create" in str(refused.value) and "Not a directory" in str(refused.value)


# --- the lock ---------------------------------------------------------------------------------


def test_the_lock_admits_one_holder_and_names_it(tmp_path: Path) -> None:
    first = StateLock.acquire(tmp_path)
    try:
        # flock belongs to an open file: a second open, even in this process, is refused.
        with pytest.raises(StateDirError) as refused:
            StateLock.acquire(tmp_path)
        assert refused.value.exit_code == exitcodes.CONFIG
        assert f"supervisor pid {os.getpid()} already runs vLLM for {tmp_path}" in str(
            refused.value
        )
        assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o640
    finally:
        first.release()
    StateLock.acquire(tmp_path).release()  # released: the next one gets it


def test_a_lock_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / LOCK_FILE).symlink_to(victim)
    with pytest.raises(StateDirError) as refused:
        StateLock.acquire(tmp_path)
    assert "symbolic link" in str(refused.value) and refused.value.exit_code == exitcodes.CONFIG
    assert victim.read_text() == "precious"


# --- the state file ---------------------------------------------------------------------------

_VALID = {
    "supervisor_pid": 10,
    "sid": 20,
    "leader": {"pid": 20, "create_time": 1.5, "name": "python", "exe": "/usr/bin/python3"},
    "members": [{"pid": 21, "create_time": 2.5, "name": "VLLM::EngineCore", "exe": "/x"}],
    "boot_time": 100.0,
}


def _with(path: str, value: object) -> str:
    record = json.loads(json.dumps(_VALID))
    *parents, leaf = path.split(".")
    node = record
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[leaf] = value
    return json.dumps(record)


@pytest.mark.parametrize(
    "content",
    [
        _with("leader.pid", "x"),  # 70 on every start before: '<' between str and int
        _with("leader.create_time", "1"),
        _with("leader.pid", True),
        _with("leader.pid", -5),
        _with("leader.pid", 10**30),
        _with("leader.exe", 5),
        _with("members", 5),
        _with("members", [7]),
        _with("boot_time", None),
        _with("sid", 21),  # vLLM leads its own session: the sid is the leader's pid
        "[1, 2]",
        "9" * 5000,
        "[" * 100_000,
        "\xff\xfe",
    ],
)
def test_an_oddly_typed_state_file_is_ignored_with_a_warning_naming_it(
    tmp_path: Path, content: str
) -> None:
    (tmp_path / run_record.FILE_NAME).write_text(content, errors="surrogateescape")
    with capture_logs() as logs:
        assert run_record.read(tmp_path) is None
    assert [entry["event"] for entry in logs] == ["state_file_ignored"]
    assert logs[0]["file"] == str(tmp_path / run_record.FILE_NAME)


def test_a_valid_state_file_reads_back() -> None:
    assert run_record.parse(json.loads(json.dumps(_VALID))).members[0].exe == "/x"


def test_a_state_file_that_is_a_link_or_a_fifo_is_ignored(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(_VALID))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / run_record.FILE_NAME).symlink_to(elsewhere)
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / run_record.FILE_NAME)  # reading it would wait for a writer
    with capture_logs() as logs:
        assert run_record.read(tmp_path / "a") is None
        assert run_record.read(tmp_path / "b") is None
    assert [entry["reason"] for entry in logs] == [
        "it is a symbolic link",
        "it is a FIFO, not a regular file",
    ]


def test_a_missing_state_file_is_no_warning(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert run_record.read(tmp_path) is None
    assert logs == []


# --- which processes a record may get ended ---------------------------------------------------


def _identity(pid: int) -> ProcessRecord:
    process = psutil.Process(pid)
    try:
        exe = process.exe()
    except psutil.AccessDenied:  # pid 1 in some sandboxes, even for root
        exe = "/sbin/init"
    return ProcessRecord(pid, process.create_time(), process.name(), exe)


def _record_of(leader: ProcessRecord, sid: int) -> run_record.RunRecord:
    return run_record.RunRecord(supervisor_pid=leader.pid, sid=sid, leader=leader)


@pytest.fixture
def stranger() -> Iterator[tuple[int, int]]:
    """An unrelated `sleep` leading its own session, with a second `sleep` in it."""
    process = subprocess.Popen(
        ["sh", "-c", "sleep 60 & exec sleep 60"], start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        leader = psutil.Process(process.pid)
        members: list[psutil.Process] = []
        for _ in range(200):
            members = leader.children()
            if members and leader.name() == "sleep":
                break
            psutil.wait_procs([leader], timeout=0.02)
        assert members and leader.name() == "sleep", "the stranger did not start"
        yield process.pid, members[0].pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_a_truthful_record_of_a_stranger_ends_nothing_it_does_not_launch(
    stranger: tuple[int, int],
) -> None:
    leader_pid, member_pid = stranger
    record = run_record.RunRecord(
        supervisor_pid=leader_pid,
        sid=leader_pid,
        leader=_identity(leader_pid),
        members=(_identity(member_pid),),
    )
    ours = os.path.realpath(sys.executable)
    assert run_record.leftover_processes(record, ours) == []
    # The record itself is accurate: only the executable keeps the strangers safe.
    assert {p.pid for p in run_record.leftover_processes(record)} == {leader_pid, member_pid}


def test_a_record_whose_executable_was_never_recorded_ends_nothing(
    stranger: tuple[int, int],
) -> None:
    leader_pid, _ = stranger
    leader = _identity(leader_pid)
    old_format = ProcessRecord(leader.pid, leader.create_time, leader.name)
    assert run_record.leftover_processes(_record_of(old_format, leader_pid)) == []


def test_pid_1_this_process_and_its_ancestors_are_never_leftovers() -> None:
    me = os.getpid()
    protected = protected_pids()
    assert {0, 1, me, os.getppid()} <= protected
    for pid in (1, me, os.getppid()):
        identity = _identity(pid)
        record = _record_of(identity, os.getsid(pid))
        assert run_record.leftover_processes(record, identity.exe) == [], pid


def test_recorded_processes_left_alive_are_named_in_a_warning(
    tmp_path: Path, stranger: tuple[int, int]
) -> None:
    leader_pid, member_pid = stranger
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    run_record.write(
        state,
        run_record.RunRecord(
            supervisor_pid=leader_pid,
            sid=leader_pid,
            leader=_identity(leader_pid),
            members=(_identity(member_pid),),
        ),
    )
    (tmp_path / "c.yaml").write_text(
        f"server: {{python: {sys.executable}}}\nmodel: {{path: {tmp_path}}}\n"
        f"supervisor: {{state_dir: {state}}}\n"
    )
    config, problems = load_config(tmp_path / "c.yaml", {})
    assert config is not None, problems
    with capture_logs() as logs:
        asyncio.run(end_leftovers(config))
    skipped = [entry for entry in logs if entry["event"] == "leftovers_skipped"]
    assert len(skipped) == 1
    assert all(str(pid) in " ".join(skipped[0]["processes"]) for pid in (leader_pid, member_pid))
    assert psutil.pid_exists(leader_pid) and psutil.pid_exists(member_pid)
    assert not (state / run_record.FILE_NAME).exists()
