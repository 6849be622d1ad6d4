"""`supervise/gpu_memory.py` through the real supervisor loop on virtual time (`supervise_sim`)
with a scripted NVML: a start waits for memory others hold (never a crash), a restart waits
until the stopped vLLM's memory is back, and NVML missing or failing never stops supervision."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.gpu_sections import GpuSection
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.gpu.nvml import GpuDevice, GpuProcess, GpuUnavailable, visible_indexes
from niodoo_supervisor.launch.topology import SINGLE_HOST, HostRole, Role
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.supervise import run_record
from niodoo_supervisor.supervise.gpu_memory import GO, GpuMemory
from niodoo_supervisor.supervise.gpu_needs import gpus_used, utilization
from niodoo_supervisor.supervise.process_tree import ProcessRecord
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.run_record import RunRecord
from niodoo_supervisor.supervise.seams import SystemClock
from niodoo_supervisor.supervise.status_file import StatusBoard
from supervise_sim import (
    START,
    FakeRun,
    RecordingNotifier,
    Sim,
    after_start,
    boots,
    now,
    sim_config,
    sim_plan,
)

GIB = 1 << 30
FOREIGN = 4_190_001  # above any pid this machine hands out
NO_DRIVER = "NVML: the NVIDIA kernel driver is not loaded (code 9)"


class ScriptedGpus:
    """NVML for a history: `count` GPUs, their holders set by the script."""

    def __init__(
        self, total_gib: int = 24, *, open_error: str | None = None, count: int = 1
    ) -> None:
        self.total = total_gib * GIB
        self.count = count
        self.holders: dict[int, tuple[int, str, int]] = {}  # pid -> bytes, NVML's name, GPU
        self.open_error = open_error
        self.failing: str | None = None
        self.reads: list[float] = []
        self.visible: list[str | None] = []
        self.closed = False

    def hold(self, pid: int, gib: float, name: str = "", *, gpu: int = 0) -> None:
        self.holders[pid] = (int(gib * GIB), name, gpu)

    def free(self, pid: int) -> None:
        self.holders.pop(pid, None)

    async def open(self) -> None:
        if self.open_error is not None:
            raise GpuUnavailable(self.open_error)

    async def devices(self, visible: str | None) -> list[GpuDevice]:
        self.reads.append(now())
        self.visible.append(visible)
        if self.failing is not None:
            raise GpuUnavailable(self.failing)
        uuids = [f"GPU-{index}" for index in range(self.count)]
        return [self._device(index) for index in visible_indexes(visible, uuids)]

    def _device(self, index: int) -> GpuDevice:
        held = {
            pid: (size, name) for pid, (size, name, gpu) in self.holders.items() if gpu == index
        }
        used = sum(size for size, _ in held.values())
        processes = tuple(GpuProcess(pid, size, name) for pid, (size, name) in held.items())
        return GpuDevice(
            index, f"GPU-{index}", "NVIDIA Sim", self.total, self.total - used, used, processes
        )

    def close(self) -> None:
        self.closed = True


def with_gpu(config: Config, **gpu: Any) -> Config:
    return config.model_copy(update={"gpu": GpuSection(**gpu)})


def events(sim: Sim, name: str) -> list[Any]:
    return [record for record in sim.logs if record["event"] == name]


def statuses(sim: Sim) -> list[str]:
    return [f for n in sim.notifier.sent for f in n.fields if f.startswith("STATUS=")]


def test_memory_others_hold_is_waited_for_with_backoff_then_vllm_starts(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    gpus.hold(FOREIGN, 21, "python")
    sim = Sim(tmp_path, [boots(5)], gpu_source=gpus)
    waits: list[dict[str, Any]] = []
    sim.at(6, lambda: waits.append(dict(sim.supervisor.reporter.status.gpu_wait or {})))
    sim.at(30, lambda: gpus.free(FOREIGN))
    sim.at(100, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    # Checked at 0, 5, 15 (5 s, doubling), freed at 30, so the check at 35 lets vLLM start.
    assert [r["retry_in_s"] for r in events(sim, "gpu_memory_busy")] == [5, 10, 20]
    assert sim.runs[0].started == after_start(35)
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]  # no BACKOFF, no FATAL
    assert sim.supervisor.policy.settings.max_starts > 1  # and only one start was counted
    assert sim.supervisor.reporter.status.restarts == 0
    busy = events(sim, "gpu_memory_busy")[0]
    assert busy["holders"] == ["pid 4190001 (python, 21.0 GiB, not ours)"]
    assert (
        "STATUS=waiting for GPU memory: GPU 0 has 3.0 of 24 GiB free, held by pid 4190001 "
        "(python, 21.0 GiB, not ours); next check in 5 s"
    ) in statuses(sim)
    assert waits[0]["holders"] == [
        {"gpu": 0, "pid": FOREIGN, "name": "python", "mib": 21504, "ours": False}
    ]
    assert waits[0]["gpus"] == [
        {"index": 0, "free_mib": 3072, "total_mib": 24576, "needed_mib": 22610}
    ]
    assert sim.supervisor.reporter.status.gpu_wait is None  # cleared once vLLM may start
    assert events(sim, "gpu_memory_checked")[0]["gpus"] == [
        "GPU 0: 24.0 of 24.0 GiB free, 22.1 needed"
    ]


def test_the_wait_backs_off_up_to_busy_retry_max(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    gpus.hold(FOREIGN, 21)
    config = with_gpu(sim_config(tmp_path), busy_retry_max=12)
    sim = Sim(tmp_path, [boots(5)], config=config, gpu_source=gpus)
    sim.at(60, sim.signal(signal.SIGTERM))
    sim.play()
    assert [r["retry_in_s"] for r in events(sim, "gpu_memory_busy")][:5] == [5, 10, 12, 12, 12]


def test_a_stop_during_the_wait_ends_it_at_once(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    gpus.hold(FOREIGN, 21)
    sim = Sim(tmp_path, [boots(5)], gpu_source=gpus)
    sim.at(7, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    assert not sim.runs
    assert sim.states() == ["STOPPING", "STOPPED"]
    assert sim.notifier.times("STOPPING=1") == [after_start(7)]


def _holds_then_crashes(gpus: ScriptedGpus, *, freed_after: float | None) -> Any:
    """vLLM holds 20 GiB, crashes 10 s after it is ready; the driver frees the memory
    `freed_after` seconds after the exit (None: never)."""

    def script(run: FakeRun) -> None:
        gpus.hold(run.pid, 20, "VLLM::Worker")

        def crash() -> None:
            run.exit(1)
            if freed_after is not None:
                run.sim.after(freed_after, lambda: gpus.free(run.pid))

        boots(5, then=lambda run: run.sim.after(10, crash))(run)

    return script


def test_a_restart_waits_until_the_crashed_vllm_memory_is_back(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    sim = Sim(tmp_path, [_holds_then_crashes(gpus, freed_after=3), boots(5)], gpu_source=gpus)
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    released = events(sim, "gpu_memory_released")
    # The crash at 15, its stop takes 0.5 s, the memory is back at 18: read every 0.25 s.
    assert released[0]["seconds"] == pytest.approx(2.5, abs=0.01)
    started_again = sim.runs[1].started - START
    assert started_again >= 18 + 2  # the memory back, then the backoff's 2 s
    assert len(events(sim, "gpu_memory_checked")) == 2
    assert not events(sim, "gpu_memory_busy")  # the restart found it free: no vLLM refusing
    assert "STATUS=waiting for vLLM's GPU memory to be freed" in statuses(sim)


def test_memory_never_freed_is_named_at_the_deadline_and_supervision_goes_on(
    tmp_path: Path,
) -> None:
    gpus = ScriptedGpus()
    config = with_gpu(sim_config(tmp_path), release_timeout=2)
    sim = Sim(
        tmp_path,
        [_holds_then_crashes(gpus, freed_after=None), boots(5)],
        config=config,
        gpu_source=gpus,
    )
    sim.at(40, lambda: gpus.free(4000))
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    held = events(sim, "gpu_memory_held")[0]
    assert held["seconds"] == pytest.approx(2.0, abs=0.01)
    assert held["holders"] == [
        "GPU 0: 4.0 of 24.0 GiB free, pid 4000 (VLLM::Worker, 20.0 GiB, of the stopped vLLM)"
    ]
    # The next start waits for it as for anyone's memory, naming it as ours, then starts.
    busy = events(sim, "gpu_memory_busy")[0]
    assert "pid 4000 (VLLM::Worker, 20.0 GiB, ours" in busy["holders"][0]
    assert len(sim.runs) == 2 and sim.runs[1].started - START >= 40
    assert "FATAL" not in sim.states()


def test_without_nvml_one_line_says_so_and_vllm_starts(tmp_path: Path) -> None:
    gpus = ScriptedGpus(open_error=NO_DRIVER)
    sim = Sim(tmp_path, [boots(5), boots(5)], gpu_source=gpus)
    sim.at(10, lambda: sim.runs[0].exit(1))
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    unavailable = events(sim, "gpu_nvml_unavailable")
    assert len(unavailable) == 1 and unavailable[0]["reason"] == NO_DRIVER
    assert len(sim.runs) == 2 and not gpus.reads  # skipped at the restart too


def test_nvml_required_but_missing_refuses_the_start(tmp_path: Path) -> None:
    gpus = ScriptedGpus(open_error=NO_DRIVER)
    sim = Sim(
        tmp_path,
        [boots(5)],
        config=with_gpu(sim_config(tmp_path), nvml="required"),
        gpu_source=gpus,
    )
    assert sim.play() == exitcodes.CONFIG
    assert not sim.runs
    assert sim.states() == ["FATAL"]
    assert sim.transition("FATAL")["reason"] == f"gpu.nvml is required, but {NO_DRIVER}"


def test_nvml_off_is_never_asked(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    gpus.hold(FOREIGN, 23)
    config = with_gpu(sim_config(tmp_path), nvml="off")
    sim = Sim(tmp_path, [boots(5)], config=config, gpu_source=gpus)
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    assert not gpus.reads and sim.runs[0].started == after_start(0)


def test_nvml_failing_mid_run_is_one_warning_and_supervision_goes_on(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    sim = Sim(tmp_path, [_holds_then_crashes(gpus, freed_after=0.0), boots(5)], gpu_source=gpus)
    sim.at(8, lambda: setattr(gpus, "failing", "NVML: a GPU is lost (code 15)"))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    failed = events(sim, "gpu_nvml_failed")
    assert len(failed) == 1 and "a GPU is lost" in failed[0]["reason"]
    assert len(sim.runs) == 2 and gpus.closed  # the crash restarted vLLM without NVML
    assert sim.supervisor.reporter.status.gpus == []
    assert sim.states()[-2:] == ["STOPPING", "STOPPED"]


def test_the_status_shows_each_gpu_and_vllm_processes_on_it(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    gpus.hold(FOREIGN, 1, "Xorg")

    def holds(run: FakeRun) -> None:
        gpus.hold(run.pid, 20)
        boots(5)(run)

    sim = Sim(tmp_path, [holds], gpu_source=gpus)
    shown: list[Any] = []
    sim.at(30, lambda: shown.append(list(sim.supervisor.reporter.status.gpus)))
    sim.at(40, sim.signal(signal.SIGTERM))
    sim.play()
    assert shown == [
        [
            {
                "index": 0,
                "uuid": "GPU-0",
                "name": "NVIDIA Sim",
                "used_mib": 21504,
                "total_mib": 24576,
                "session_processes": [{"pid": 4000, "mib": 20480}],
            }
        ]
    ]


def test_cuda_visible_devices_comes_from_vllm_environment(tmp_path: Path) -> None:
    gpus = ScriptedGpus()
    config = sim_config(tmp_path, server={"env": {"CUDA_VISIBLE_DEVICES": "GPU-0"}})
    sim = Sim(tmp_path, [boots(5)], config=config, gpu_source=gpus)
    sim.at(20, sim.signal(signal.SIGTERM))
    sim.play()
    assert set(gpus.visible) == {"GPU-0"}


@pytest.mark.parametrize(
    ("configured", "version", "expected"),
    [(None, None, 0.92), (None, "0.32.0", 0.92), (None, "0.19.1", 0.9), (None, "x", 0.92),
     (0.5, "0.19.1", 0.5)],
)  # fmt: skip
def test_utilization_is_the_config_or_vllm_default(
    tmp_path: Path, configured: float | None, version: str | None, expected: float
) -> None:
    config = sim_config(tmp_path)
    engine = config.engine.model_copy(update={"gpu_memory_utilization": configured})
    assert utilization(config.model_copy(update={"engine": engine}), version) == expected


class LiveOnlyGpus(ScriptedGpus):
    """Its holders hold memory only while they run (and are not zombies)."""

    async def devices(self, visible: str | None) -> list[GpuDevice]:
        for pid in list(self.holders):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    continue
            self.free(pid)
        return await super().devices(visible)


async def test_a_recorded_leftover_holding_the_memory_is_ended_then_vllm_may_start(
    tmp_path: Path,
) -> None:
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        process = psutil.Process(leftover.pid)
        config = sim_config(tmp_path, server={"python": sys.executable})
        config.state_dir.mkdir(parents=True)
        name = process.name()
        identity = ProcessRecord(leftover.pid, process.create_time(), name, process.exe())
        run_record.write(config.state_dir, RunRecord(os.getpid(), leftover.pid, identity))
        gpus = LiveOnlyGpus()
        gpus.hold(leftover.pid, 21)
        status = StatusBoard()
        reporter = Reporter(
            RecordingNotifier(), SystemClock(), config.state_dir, status, EventCounters()
        )
        memory = GpuMemory(gpus, reporter, SystemClock(), {})
        with capture_logs() as logs:
            verdict = await memory.before_start(config, sim_plan("python3"))
        memory.close()
        assert verdict == GO
        assert leftover.wait(10) == -signal.SIGTERM
        said = [record["event"] for record in logs]
        assert said == [
            "gpu_memory_leftovers",
            "leftovers_found",
            "leftovers_ended",
            "gpu_memory_checked",
        ]
        assert logs[0]["holders"] == [f"pid {leftover.pid} ({name}, 21.0 GiB, ours)"]
        assert not (config.state_dir / run_record.FILE_NAME).exists()
    finally:
        leftover.kill()
        leftover.wait()


# --- which GPUs: those vLLM uses, not every visible one -------------------------------------


async def _verdict(
    tmp_path: Path,
    gpus: ScriptedGpus,
    *,
    role: HostRole = SINGLE_HOST,
    engine: dict[str, Any] | None = None,
    **config_changes: Any,
) -> tuple[Any, list[Any]]:
    config = sim_config(tmp_path, **config_changes)
    config = config.model_copy(update={"engine": config.engine.model_copy(update=engine or {})})
    reporter = Reporter(
        RecordingNotifier(), SystemClock(), tmp_path / "state", StatusBoard(), EventCounters()
    )
    memory = GpuMemory(gpus, reporter, SystemClock(), {})
    with capture_logs() as logs:
        verdict = await memory.before_start(config, replace(sim_plan("python3"), role=role))
    memory.close()
    return verdict, logs


def _stranger_on_gpu_1() -> ScriptedGpus:
    gpus = ScriptedGpus(count=2)
    gpus.hold(FOREIGN, 21, "python", gpu=1)
    return gpus


async def test_a_stranger_on_a_gpu_vllm_does_not_use_is_no_reason_to_wait(
    tmp_path: Path,
) -> None:
    verdict, logs = await _verdict(tmp_path, _stranger_on_gpu_1())  # TP 1: cuda:0 only
    assert verdict == GO
    checked = [record for record in logs if record["event"] == "gpu_memory_checked"]
    assert checked[0]["gpus"] == ["GPU 0: 24.0 of 24.0 GiB free, 22.1 needed"]
    assert checked[0]["scope"] == "the first 1 visible GPU(s), those vLLM uses"


@pytest.mark.parametrize(
    ("role", "engine"),
    [
        (SINGLE_HOST, {"tensor_parallel_size": 2}),
        (SINGLE_HOST, {"pipeline_parallel_size": 2}),
        (HostRole("mp", 1, 2, Role.HEADLESS, "10.0.0.1"), {"tensor_parallel_size": 4}),
        (HostRole("ray", 0, 2, Role.HEAD, "10.0.0.1"), {}),  # Ray places the workers
        (HostRole("ray", 1, 2, Role.RAY_WORKER, "10.0.0.1"), {}),  # its node runs some
    ],
)
async def test_a_stranger_on_a_gpu_this_host_part_uses_is_waited_for(
    tmp_path: Path, role: HostRole, engine: dict[str, Any]
) -> None:
    verdict, logs = await _verdict(tmp_path, _stranger_on_gpu_1(), role=role, engine=engine)
    assert verdict.wait == 5.0
    busy = [record for record in logs if record["event"] == "gpu_memory_busy"]
    assert busy[0]["gpus"] == ["GPU 1: 3.0 GiB free"]


def test_the_gpus_used_count_as_the_preflight_counts_them(tmp_path: Path) -> None:
    config = sim_config(tmp_path)
    engine = config.engine.model_copy(
        update={"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    )
    config = config.model_copy(update={"engine": engine})
    assert gpus_used(config, SINGLE_HOST) == 4
    assert gpus_used(config, HostRole("mp", 0, 2, Role.HEAD, "10.0.0.1")) == 2
    assert gpus_used(config, HostRole("ray", 0, 2, Role.HEAD, "10.0.0.1")) is None


# --- MIG, and nothing visible: never "checked" with nothing checked ---------------------------

MIG = "MIG-4f2f4a3c-1b1e-5d6e-9f00-0123456789ab"


@pytest.mark.parametrize("visible", [MIG, f"{MIG},0", ""])
async def test_mig_or_no_visible_gpu_is_said_not_checked(tmp_path: Path, visible: str) -> None:
    gpus = ScriptedGpus()
    gpus.hold(FOREIGN, 23)  # not waited for: it is not known to be on what vLLM uses
    verdict, logs = await _verdict(
        tmp_path, gpus, server={"env": {"CUDA_VISIBLE_DEVICES": visible}}
    )
    assert verdict == GO
    said = [record["event"] for record in logs]
    assert said == ["gpu_nvml_unavailable"]
    reason = logs[0]["reason"]
    assert (MIG in reason and "not checked" in reason) or "names no GPU" in reason


async def test_mig_with_nvml_required_refuses_the_start(tmp_path: Path) -> None:
    config_gpu = {"nvml": "required"}
    config = with_gpu(
        sim_config(tmp_path, server={"env": {"CUDA_VISIBLE_DEVICES": MIG}}), **config_gpu
    )
    reporter = Reporter(
        RecordingNotifier(), SystemClock(), tmp_path / "state", StatusBoard(), EventCounters()
    )
    memory = GpuMemory(ScriptedGpus(), reporter, SystemClock(), {})
    verdict = await memory.before_start(config, sim_plan("python3"))
    memory.close()
    assert verdict.refused is not None and verdict.refused.startswith(
        f"gpu.nvml is required, but CUDA_VISIBLE_DEVICES names MIG device(s) {MIG}"
    )


# --- a stop during the release wait ends it -------------------------------------------------


@pytest.mark.parametrize(
    ("stop_at", "waited"),
    [(20.0, 4.5), (15.2, 0.0)],  # during the wait; while the crashed vLLM was being stopped
)
def test_a_stop_during_the_release_wait_ends_it_at_once(
    tmp_path: Path, stop_at: float, waited: float
) -> None:
    gpus = ScriptedGpus()  # the crash at 15 stops in 0.5 s; its memory is never freed
    sim = Sim(tmp_path, [_holds_then_crashes(gpus, freed_after=None)], gpu_source=gpus)
    sim.at(stop_at, sim.signal(signal.SIGTERM))
    assert sim.play() == exitcodes.OK
    held = events(sim, "gpu_memory_held")
    assert len(held) == 1 and held[0]["seconds"] == pytest.approx(waited, abs=0.3)
    assert held[0]["action"] == "a stop was asked: not waiting any more"
    assert len(sim.runs) == 1
    assert sim.states()[-2:] == ["STOPPING", "STOPPED"]


def test_the_stop_asked_still_waits_for_its_own_vllm_memory(tmp_path: Path) -> None:
    gpus = ScriptedGpus()

    def holds(run: FakeRun) -> None:
        gpus.hold(run.pid, 20)
        boots(5)(run)

    sim = Sim(tmp_path, [holds], gpu_source=gpus)
    sim.at(20, sim.signal(signal.SIGTERM))
    sim.at(23, lambda: gpus.free(4000))
    assert sim.play() == exitcodes.OK
    assert events(sim, "gpu_memory_released")[0]["seconds"] == pytest.approx(2.5, abs=0.3)
