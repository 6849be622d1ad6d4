"""The Ray companion with the real supervisor and the fake `ray` (`tests/fakeray/ray`): run
in vLLM's session before vLLM, stopped after it, restarted with this host's part when it dies;
on a `ray-worker` host the only process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fault_supervisor import assert_nothing_left, free_port, make_config, stop
from harness import (
    REPO,
    NotifySocket,
    SupervisorRun,
    launched_pids,
    notify_socket,
    start_supervisor,
    stop_supervisor,
    wait_for,
)
from head_port import HeadPort, head_port
from role_configs import topology_overrides

FAKE_RAY = REPO / "tests" / "fakeray" / "ray"


def start(
    config: Path, tmp: Path, notify: NotifySocket, die_file: Path, logs: str = "supervisor"
) -> SupervisorRun:
    """`niodoo-supervisor run` of `config`, its output in `tmp`/`logs`; the fake Ray nodes it
    starts exit 1 once `die_file` exists."""
    (tmp / logs).mkdir()
    extra_env = {"FAKE_RAY_DIE_FILE": str(die_file)}
    return start_supervisor(config, tmp / "state", notify, tmp / logs, extra_env=extra_env)


def ray_config(tmp: Path, rank: int, ray_port: int) -> Path:
    """Rank `rank` of 2 of a `ray` topology whose Ray is the fake; the plan renders the Ray
    node (`ray start ... --block`) as the companion."""
    topology = {
        "backend": "ray",
        "nodes": 2,
        "rank": rank,
        "head_address": "127.0.0.1",
        "ray_port": ray_port,
        "ray_command": str(FAKE_RAY),
    }
    return make_config(tmp, "load_seconds=0.3", **topology_overrides(topology))


def ray_processes(run: SupervisorRun) -> list[psutil.Process]:
    """The fake Ray nodes in the sessions of the vLLMs (keepers) this supervisor launched."""
    leaders = set(launched_pids(run))
    found = []
    for process in psutil.process_iter():
        try:
            # The script's path among the first arguments (`/usr/bin/env python3 ray ...` while
            # its shebang runs), never inside the keeper's JSON.
            if os.getsid(process.pid) in leaders and str(FAKE_RAY) in process.cmdline()[:3]:
                found.append(process)
        except (OSError, psutil.Error):
            continue
    return found


@pytest.fixture
def ray_worker(tmp_path: Path) -> Iterator[tuple[HeadPort, SupervisorRun, Path]]:
    """Rank 1 of a `ray` topology: only a Ray node here; a `HeadPort` plays the Ray head."""
    with head_port() as head, notify_socket(tmp_path) as notify:
        die = tmp_path / "ray-die"
        run = start(ray_config(tmp_path, 1, head.port), tmp_path, notify, die)
        try:
            yield head, run, die
        finally:
            stop_supervisor(run)


def test_a_sigkilled_supervisors_ray_node_is_a_leftover_of_the_next(tmp_path: Path) -> None:
    with notify_socket(tmp_path) as notify:
        config, die = ray_config(tmp_path, 0, free_port()), tmp_path / "ray-die"
        first = start(config, tmp_path, notify, die)
        try:
            first.wait_state("READY", 30)
            (ray,) = wait_for(lambda: ray_processes(first), 10, "the Ray node")
            first.process.kill()  # the supervisor alone: its session is left running
            first.wait_exit(10)
            assert ray.is_running()
            second = start(config, tmp_path, notify, die, logs="second")
            try:
                second.wait_state("READY", 30)
                found = second.event("leftovers_found")
                assert found is not None
                assert str(ray.pid) in found["processes"]
                assert not ray.is_running()
                assert stop(second) == 0
                assert_nothing_left(second)
            finally:
                stop_supervisor(second)
        finally:
            stop_supervisor(first)


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[SupervisorRun, Path]]:
    """Rank 0 of a `ray` topology: the Ray head (the fake) and the fake vLLM."""
    with notify_socket(tmp_path) as notify:
        die = tmp_path / "ray-die"
        run = start(ray_config(tmp_path, 0, free_port()), tmp_path, notify, die)
        try:
            yield run, die
        finally:
            stop_supervisor(run)


def test_a_ray_worker_runs_only_the_ray_node_and_says_its_role(
    ray_worker: tuple[HeadPort, SupervisorRun, Path],
) -> None:
    head, run, _ = ray_worker
    run.wait_state("READY", 30)
    started = run.event("companion_started", companion="ray")
    assert started is not None
    assert started["command"] == f"{FAKE_RAY} start --address=127.0.0.1:{head.port} --block"
    ready = wait_for(lambda: run.event("ready"), 10, "the ready record (just after READY)")
    assert ready is not None
    assert ready["role"] == "ray-worker rank 1 of 2 (ray), head 127.0.0.1 reachable"
    assert run.status()["role"]["sees"][0] == "the Ray node (companion) process"
    (ray,) = wait_for(lambda: ray_processes(run), 10, "the Ray node")
    session = launched_pids(run)[0]
    names = {p.name() for p in psutil.process_iter() if _in_session(p, session)}
    assert not any("vllm" in name.lower() or "engine" in name.lower() for name in names), names
    assert ray.is_running()
    assert stop(run) == 0
    assert_nothing_left(run)


def _in_session(process: psutil.Process, sid: int) -> bool:
    try:
        return os.getsid(process.pid) == sid
    except OSError:
        return False


def test_a_dead_ray_node_is_restarted(ray_worker: tuple[HeadPort, SupervisorRun, Path]) -> None:
    _, run, die = ray_worker
    run.wait_state("READY", 30)
    first = wait_for(lambda: ray_processes(run), 10, "the Ray node")[0].pid
    die.touch()  # the fake Ray node exits 1
    run.wait_state("BACKOFF", 30)
    exited = run.event("companion_exited", companion="ray")
    assert exited is not None
    wait_for(lambda: run.states().count("READY") >= 2, 30, "READY again")
    (again,) = wait_for(lambda: ray_processes(run), 10, "the Ray node again")
    assert again.pid != first
    assert stop(run) == 0
    assert_nothing_left(run)


def test_the_ray_head_runs_before_vllm_in_its_session_and_stops_after_it(
    ray_head: tuple[SupervisorRun, Path],
) -> None:
    run, _ = ray_head
    run.wait_state("READY", 30)  # vLLM's HTTP server answers: probed as on one host
    ready = wait_for(lambda: run.event("ready"), 10, "the ready record (just after READY)")
    assert ready is not None
    assert "role" not in ready  # the head serves: its ready record names the address
    (ray,) = wait_for(lambda: ray_processes(run), 10, "the Ray node")
    session = launched_pids(run)[0]
    vllm = [p for p in psutil.process_iter() if _in_session(p, session) and p.pid != ray.pid]
    assert vllm, "vLLM runs in the same session as the Ray node"
    assert ray.create_time() <= min(p.create_time() for p in vllm if p.pid != session)
    assert stop(run) == 0
    assert_nothing_left(run)
    # Stopped after vLLM: in the session's log the Ray node's last line follows vLLM's last.
    text = (run.state_dir / "vllm.log").read_text()
    assert text.index("session keeper: started ray") < text.index("Starting vLLM server on")
    assert text.rindex("Stopped all Ray processes.") > text.rindex("[shutdown] API server")


def test_the_ray_heads_death_restarts_the_hosts_part(ray_head: tuple[SupervisorRun, Path]) -> None:
    run, die = ray_head
    run.wait_state("READY", 30)
    die.touch()
    run.wait_state("BACKOFF", 30)
    assert run.event("companion_exited", companion="ray") is not None
    wait_for(lambda: run.states().count("READY") >= 2, 30, "READY again")
    assert stop(run) == 0
    assert_nothing_left(run)
