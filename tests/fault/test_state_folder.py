"""The supervisor (a real process) with a hostile or broken state folder: planted process
records, links where its files go, a folder others can write, a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fault_supervisor import (
    Launcher,
    assert_nothing_left,
    stop,
)
from harness import (
    launched_pids,
    wait_for,
)

# --- the state folder is not trusted ------------------------------------------------------------


@pytest.fixture
def stranger() -> Iterator[list[psutil.Process]]:
    """An unrelated session: a `sleep` leading it and a second `sleep` in it."""
    process = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    try:
        leader = psutil.Process(process.pid)
        wait_for(lambda: leader.name() == "sleep" and leader.children(), 10, "the stranger")
        yield [leader, *leader.children()]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _identity(process: psutil.Process, *, with_exe: bool) -> dict[str, object]:
    identity: dict[str, object] = {
        "pid": process.pid,
        "create_time": process.create_time(),
        "name": process.name(),
    }
    if with_exe:
        identity["exe"] = process.exe()
    return identity


@pytest.mark.parametrize(
    ("named_as_supervisor", "with_exe"),
    [(False, False), (True, False), (True, True)],
    ids=["supervisor-gone", "live-stranger-as-supervisor", "current-format"],
)
def test_a_planted_process_record_ends_no_stranger_and_blocks_no_start(
    supervise: Launcher,
    tmp_path: Path,
    stranger: list[psutil.Process],
    named_as_supervisor: bool,
    with_exe: bool,
) -> None:
    leader, member = stranger
    state = tmp_path / "state"
    state.mkdir()
    (state / "vllm-processes.json").write_text(
        json.dumps(
            {
                "supervisor_pid": leader.pid,
                "supervisor_create_time": leader.create_time() if named_as_supervisor else 1.0,
                "sid": leader.pid,
                "leader": _identity(leader, with_exe=with_exe),
                "members": [_identity(member, with_exe=with_exe)],
                "boot_time": psutil.boot_time(),
            }
        )
    )
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    assert leader.is_running() and member.is_running()
    assert run.event("leftovers_found") is None
    assert stop(run) == 0
    assert leader.is_running() and member.is_running()
    assert_nothing_left(run)


def test_an_oddly_typed_state_file_is_ignored_and_replaced(
    supervise: Launcher, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    planted = {"supervisor_pid": 1, "sid": 1, "leader": {"pid": "x", "create_time": 1.0}}
    (state / "vllm-processes.json").write_text(
        json.dumps({**planted, "boot_time": psutil.boot_time()})
    )
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    ignored = run.event("state_file_ignored")
    assert ignored is not None and ignored["file"] == str(state / "vllm-processes.json")
    record = json.loads((state / "vllm-processes.json").read_text())
    assert record["leader"]["pid"] == launched_pids(run)[0]
    assert stop(run) == 0
    assert_nothing_left(run)


def _links_to_a_victim(tmp_path: Path, *names: str) -> tuple[Path, Path]:
    """The state folder with `names` planted as links to one file outside it (the victim)."""
    state, victim = tmp_path / "state", tmp_path / "victim.txt"
    state.mkdir()
    victim.write_text("precious\n")
    for name in names:
        (state / name).symlink_to(victim)
    return state, victim


def test_links_in_the_state_folder_are_not_followed(supervise: Launcher, tmp_path: Path) -> None:
    state, victim = _links_to_a_victim(tmp_path, "vllm-logging.json", "status.json")
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    assert victim.read_text() == "precious\n"
    for name in ("vllm-logging.json", "status.json"):  # replaced by a file of our own
        assert not (state / name).is_symlink() and (state / name).stat().st_size > 0
    assert (state / "status.json").stat().st_mode & 0o777 == 0o640
    assert stop(run) == 0
    assert_nothing_left(run)


def test_a_log_file_that_is_a_link_is_refused(supervise: Launcher, tmp_path: Path) -> None:
    state, victim = _links_to_a_victim(tmp_path, "vllm.log")
    run = supervise("load_seconds=0.2")
    assert run.wait_exit(20) == 78
    assert f"supervisor.log.path: {state / 'vllm.log'} is a symbolic link" in run.stderr()
    assert victim.read_text() == "precious\n" and launched_pids(run) == []


def test_a_state_folder_its_group_can_write_is_refused(supervise: Launcher, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o775)
    run = supervise("load_seconds=0.2")
    assert run.wait_exit(20) == 78
    refused = run.event("state_dir_refused")
    assert refused is not None and refused["problem"].endswith(f"fix: chmod go-w {state}")
    assert launched_pids(run) == [] and "Traceback" not in run.stderr()
    assert len(run.stderr().splitlines()) == 1


# --- a full disk at the first start is temporary -------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs with the given options (root only), unmounted afterwards."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()


@pytest.mark.parametrize("full", ["space", "inodes"])
def test_a_full_disk_at_the_first_start_is_temporary(
    supervise: Launcher, tiny_tmpfs: Callable[[str], Path], full: str
) -> None:
    if full == "space":
        disk = tiny_tmpfs("size=64k")
        _fill(disk)
    else:
        disk = tiny_tmpfs("size=1m,nr_inodes=1")  # the root folder takes the only inode
    run = supervise("load_seconds=0.2", supervisor__state_dir=str(disk / "state"))
    assert run.wait_exit(20) == 75
    assert "No space left on device" in run.stderr() and "Traceback" not in run.stderr()
    assert launched_pids(run) == []
