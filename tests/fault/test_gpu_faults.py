"""GPU memory with the real supervisor, the fake vLLM and the scripted fake NVML
(`tests/fakenvml/pynvml.py`, first on the supervisor's PYTHONPATH): memory freed late after a
restart, held by a stranger, held by our orphan after a SIGKILLed supervisor, and NVML itself
missing or failing mid-run."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fault_supervisor import assert_nothing_left, make_config, status_command, stop
from harness import (
    REPO,
    SupervisorRun,
    launched_pids,
    notify_socket,
    sessions_descended_from,
    start_supervisor,
    stop_supervisor,
    wait_for,
)

FAKE_NVML = REPO / "tests" / "fakenvml"
FOREIGN = 4_190_001  # no process has it: NVML's word alone (another container's process)
GPU = {"name": "NVIDIA A10", "uuid": "GPU-1f0e5a3c-0000-0000-0000-000000000000", "total_mib": 24576}

Supervise = Callable[..., SupervisorRun]


@pytest.fixture
def nvml_script(tmp_path: Path) -> Callable[..., Path]:
    def write(**content: Any) -> Path:
        path = tmp_path / "nvml.json"
        path.write_text(json.dumps({"devices": [GPU], **content}))
        return path

    return write


@pytest.fixture
def supervise(tmp_path: Path, nvml_script: Callable[..., Path]) -> Iterator[Supervise]:
    """`niodoo-supervisor run` on the fake vLLM, with the fake NVML as its `pynvml`."""
    runs: list[SupervisorRun] = []
    with notify_socket(tmp_path) as notify:

        def launch(faults: str = "", **overrides: object) -> SupervisorRun:
            config = make_config(tmp_path, faults, **overrides)
            script = tmp_path / "nvml.json"
            if not script.exists():
                nvml_script()
            path = os.pathsep.join([str(FAKE_NVML), os.environ.get("PYTHONPATH", "")])
            env = {"PYTHONPATH": path, "FAKE_NVML_SCRIPT": str(script)}
            run = start_supervisor(config, tmp_path / "state", notify, tmp_path, extra_env=env)
            runs.append(run)
            return run

        yield launch
        for run in runs:
            stop_supervisor(run)


def vllm_worker_holds(tmp_path: Path, mib: int = 20000, release_s: float = 2.0) -> dict[str, Any]:
    """The fake vLLM's Worker (its command line names this test's model) holds `mib`, freed
    `release_s` after it exits."""
    model = str(tmp_path / "model")
    return {"cmdline": model, "comm": "VLLM::Worker", "mib": mib, "release_s": release_s}


def test_a_restart_waits_until_the_memory_is_freed_late(
    supervise: Supervise, tmp_path: Path, nvml_script: Callable[..., Path]
) -> None:
    nvml_script(holders=[vllm_worker_holds(tmp_path, release_s=2.0)])
    run = supervise()
    run.wait_state("READY", 60)
    wait_for(
        lambda: run.status().get("gpus", [{}])[0].get("session_processes"),
        10,
        "the Worker on the GPU",
    )
    gpu = run.status()["gpus"][0]
    assert (gpu["used_mib"], gpu["total_mib"]) == (20000, 24576)
    worker = gpu["session_processes"][0]
    assert worker["mib"] == 20000 and worker["pid"] in sessions_descended_from(run)
    restarted = run.cli("restart", "--now")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_for(lambda: run.states().count("READY") >= 2, 60, "READY after the restart")
    released = run.event("gpu_memory_released")
    assert released is not None
    # The fake frees the Worker's memory 2 s after it saw it dead, at the wait's first read.
    assert float(released["seconds"]) >= 2.0
    events = [r.get("event") for r in run.events()]
    starts = [i for i, r in enumerate(run.events()) if r.get("new") == "STARTING"]
    assert events.index("gpu_memory_released") < starts[1]  # the restart began only after
    assert run.event("gpu_memory_busy") is None  # so vLLM never met memory in use
    metrics = run.metrics()
    assert metrics['niodoo_gpu_memory_total_bytes{gpu="0"}'] == 24576 * 2**20
    assert stop(run) == 0
    assert_nothing_left(run)


def test_memory_a_stranger_holds_is_waited_for_then_vllm_starts(
    supervise: Supervise, tmp_path: Path, nvml_script: Callable[..., Path]
) -> None:
    freed = tmp_path / "freed"
    stranger = {"pid": FOREIGN, "name": "python", "mib": 21000, "until_file": str(freed)}
    nvml_script(foreign=[stranger])
    run = supervise(gpu__busy_retry_max=0.5)
    wait_for(
        lambda: len([r for r in run.events() if r.get("event") == "gpu_memory_busy"]) >= 3,
        30,
        "three checks",
    )
    busy = run.event("gpu_memory_busy")
    assert busy is not None and f"pid {FOREIGN} (python, 20.5 GiB, not ours)" in busy["holders"]
    assert launched_pids(run) == [] and run.states() == []  # waiting, not crashing
    wait = run.status()["gpu_wait"]
    assert wait["holders"] == [
        {"gpu": 0, "pid": FOREIGN, "name": "python", "mib": 21000, "ours": False}
    ]
    said = [s for s in run.notify.statuses() if s.startswith("waiting for GPU memory:")]
    assert said and f"held by pid {FOREIGN} (python, 20.5 GiB, not ours)" in said[0]
    shown = status_command(run)
    assert "gpus:      waiting for GPU memory: GPU 0 has 3.5 of 24 GiB free" in shown.stdout
    freed.touch()
    run.wait_state("READY", 60)
    assert len(launched_pids(run)) == 1 and run.status()["gpu_wait"] is None
    assert run.status()["restarts"] == 0
    assert stop(run) == 0
    assert_nothing_left(run)


def test_a_stop_while_waiting_for_memory_ends_at_once(
    supervise: Supervise, nvml_script: Callable[..., Path]
) -> None:
    nvml_script(foreign=[{"pid": FOREIGN, "mib": 23000}])
    run = supervise()
    wait_for(lambda: run.event("gpu_memory_busy"), 30, "the wait")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0  # the next check was 5 s away
    assert run.states() == ["STOPPING", "STOPPED"] and launched_pids(run) == []


def test_our_orphan_after_a_sigkilled_supervisor_is_ended_then_vllm_starts(
    supervise: Supervise, tmp_path: Path, nvml_script: Callable[..., Path]
) -> None:
    nvml_script(holders=[vllm_worker_holds(tmp_path, release_s=1.0)])
    first = supervise(gpu__busy_retry_max=0.5)
    first.wait_state("READY", 60)
    wait_for(
        lambda: first.status().get("gpus", [{}])[0].get("session_processes"),
        10,
        "the Worker on the GPU",
    )
    orphans = sessions_descended_from(first)
    first.process.kill()  # vLLM and its Worker stay, holding the memory
    first.process.wait()
    second = supervise(gpu__busy_retry_max=0.5)
    second.wait_state("READY", 60)
    found = second.event("leftovers_found")
    assert found is not None and "VLLM::Worker" in found["processes"]
    # Ended, but its memory is freed 1 s later: waited for as ours, never a stranger's.
    busy = second.event("gpu_memory_busy")
    assert busy is not None
    assert (
        "(VLLM::Worker, 19.5 GiB, ours, exited; the driver has not freed it yet)" in busy["holders"]
    )
    assert "not ours" not in busy["holders"]
    assert not any(pid in sessions_descended_from(second) for pid in orphans)
    assert stop(second) == 0
    assert_nothing_left(second)


def test_without_the_nvml_library_one_line_and_vllm_starts(
    supervise: Supervise, nvml_script: Callable[..., Path]
) -> None:
    nvml_script(init_error=12)
    run = supervise()
    run.wait_state("READY", 60)
    lines = [r for r in run.events() if r.get("event") == "gpu_nvml_unavailable"]
    assert len(lines) == 1 and "install the NVIDIA driver" in lines[0]["reason"]
    assert run.status()["gpus"] == []
    assert stop(run) == 0


def test_nvml_required_but_missing_refuses_to_start(
    supervise: Supervise, nvml_script: Callable[..., Path]
) -> None:
    nvml_script(init_error=9)
    run = supervise(gpu__nvml="required")
    assert run.wait_exit(30) == 78
    fatal = run.event("state_changed", new="FATAL")
    assert (
        fatal is not None
        and "gpu.nvml is required, but NVML: the NVIDIA kernel driver" in fatal["reason"]
    )
    assert launched_pids(run) == []


def test_a_gpu_lost_mid_run_is_one_warning_and_supervision_goes_on(
    supervise: Supervise, tmp_path: Path, nvml_script: Callable[..., Path]
) -> None:
    lost = tmp_path / "lost"
    nvml_script(holders=[vllm_worker_holds(tmp_path, release_s=0)], lost_file=str(lost))
    run = supervise()
    run.wait_state("READY", 60)
    wait_for(lambda: run.status().get("gpus"), 10, "the GPU in the status")
    lost.touch()
    wait_for(lambda: run.event("gpu_nvml_failed"), 20, "the warning")
    restarted = run.cli("restart", "--now")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_for(lambda: run.states().count("READY") >= 2, 60, "READY after the restart")
    failed = [r for r in run.events() if r.get("event") == "gpu_nvml_failed"]
    assert len(failed) == 1 and "a GPU is lost" in failed[0]["reason"]
    assert failed[0]["priority"] == "4"  # a warning
    assert run.status()["gpus"] == []
    assert stop(run) == 0
    assert_nothing_left(run)
