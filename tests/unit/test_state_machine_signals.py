"""Reload (SIGHUP) runs as a task that posts its result: the loop keeps probing, feeding the
watchdog and acting on a stop meanwhile. Scripted histories in virtual time."""

from __future__ import annotations

import asyncio
import functools
import itertools
import signal
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.supervise.incidents import ReloadResult
from supervise_sim import START, FakeRun, Script, Sim, after_start, boots, sim_config, sim_plan


def _reloadable(tmp_path: Path, *scripts: Script, **supervisor: Any) -> Sim:
    sim = Sim(tmp_path, scripts=list(scripts), config=sim_config(tmp_path, **supervisor))
    new = sim_config(tmp_path, **supervisor)
    sim.reload_result = ReloadResult(new, sim_plan("python3", "--new"))
    return sim


def _release(sim: Sim) -> None:
    assert sim.reload_gate is not None
    sim.reload_gate.set()


def test_reloads_restart_vllm_with_the_new_config_and_are_no_crash(tmp_path: Path) -> None:
    restart = {"max_starts": 2, "window": 900, "jitter": 0}
    sim = _reloadable(tmp_path, *[boots(5.0)] * 4, restart=restart)
    new = sim_config(tmp_path, restart=restart)
    for number, at in enumerate((20, 40, 60)):  # three reloads with max_starts 2
        plan = sim_plan("python3", f"--v{number}")  # each one changes the command line
        sim.at(at - 1, functools.partial(setattr, sim, "reload_result", ReloadResult(new, plan)))
        sim.at(at, sim.signal(signal.SIGHUP))
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states().count("READY") == 4
    assert "FATAL" not in sim.states() and "BACKOFF" not in sim.states()
    assert sim.transition("STOPPING")["reason"] == "config changed: vLLM command line"
    assert [run.argv for run in sim.runs] == [("python3",)] + [
        ("python3", f"--v{number}") for number in range(3)
    ]
    assert sim.notifier.times("RELOADING=1")


def test_an_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    sim = _reloadable(tmp_path, boots(5.0), boots(5.0))
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3"))
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"] and len(sim.runs) == 1
    assert sim.runs[0].stopped_at == after_start(40)
    assert sim.event("reload_unchanged") is not None and sim.event("reload_restart") is None
    statuses = [(n.at, n.fields) for n in sim.notifier.sent if START + 20 <= n.at < START + 21]
    reload_text = "STATUS=reloaded: config unchanged, vLLM keeps serving"
    assert [fields[0] for _, fields in statuses if reload_text in fields] == ["RELOADING=1"]
    assert any(fields == ("READY=1",) for _, fields in statuses)  # the reload is over


def test_a_probe_interval_change_applies_at_once_without_a_restart(tmp_path: Path) -> None:
    sim = _reloadable(tmp_path, boots(5.0), health={"interval": 10})
    sim.reload_result = ReloadResult(
        sim_config(tmp_path, health={"interval": 2, "timeout": 1}), sim_plan("python3")
    )
    sim.at(30, sim.signal(signal.SIGHUP))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"] and len(sim.runs) == 1
    # A check every interval, counted from the end of the one before (a probe takes 5 ms).
    before = [at for at in sim.probes if START + 6 <= at < START + 30]
    after = [at for at in sim.probes if START + 30 <= at < START + 60]
    assert [b - a for a, b in itertools.pairwise(before)] == [pytest.approx(10.005)]
    assert after[0] == after_start(30)  # the last check ended more than 2 s ago: at once
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert len(gaps) == 14 and gaps == [pytest.approx(2.005)] * 14
    applied = sim.event("reload_applied")
    assert applied is not None
    assert applied["keys"] == ["supervisor.health.interval", "supervisor.health.timeout"]
    assert "supervisor.health.interval: 10.0 -> 2.0" in applied["changes"]
    # The new timeout is the probe's: the run's prober was replaced, the old one closed.
    assert [(p.timeout, p.closed) for p in sim.probers] == [(5.0, True), (1.0, True)]


def test_restart_settings_apply_at_once_to_the_running_vllm_s_next_crash(tmp_path: Path) -> None:
    def crash(run: FakeRun) -> None:
        run.sim.after(30, lambda: run.exit(1))

    sim = _reloadable(tmp_path, boots(5.0, then=crash), boots(5.0))
    restart = {"initial_delay": 7, "factor": 2, "max_delay": 120, "jitter": 0,
               "reset_after": 300, "max_starts": 5, "window": 900}  # fmt: skip
    sim.reload_result = ReloadResult(sim_config(tmp_path, restart=restart), sim_plan("python3"))
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 2 and sim.states().count("BACKOFF") == 1  # only the crash
    crashed = sim.runs[0]
    assert crashed.stopped_at is not None
    assert sim.runs[1].started - crashed.stopped_at - sim.stop_takes == pytest.approx(7.0)


def test_a_refused_reload_keeps_vllm_running(tmp_path: Path) -> None:
    sim = _reloadable(tmp_path, boots(5.0))
    sim.reload_result = ReloadResult(None, None, ["lora.max_lora_rank: 24 is not one of 8, 16"])
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"] and len(sim.runs) == 1
    refused = sim.event("reload_refused")
    assert refused is not None and refused["problem"].startswith("lora.max_lora_rank")


def test_a_stop_during_a_slow_reload_is_acted_on_at_once(tmp_path: Path) -> None:
    # The reload (a preflight with a cold flag cache takes minutes) never finishes here.
    sim = _reloadable(tmp_path, boots(5.0), health={"interval": 2})
    sim.reload_gate = asyncio.Event()
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    assert sim.runs[0].stopped_at == after_start(60)
    # Probes and watchdog pings went on while the reload was under way.
    assert len([at for at in sim.probes if START + 21 <= at < START + 59]) >= 18
    pings = [at for at in sim.notifier.times("WATCHDOG=1") if START + 21 <= at < START + 59]
    assert len(pings) >= 18


def test_a_sighup_during_a_reload_reads_the_config_again_after_it(tmp_path: Path) -> None:
    sim = _reloadable(tmp_path, *[boots(5.0)] * 3)
    sim.reload_gate = asyncio.Event()
    calls: list[float] = []
    reload = sim._reload

    async def counted() -> ReloadResult:
        calls.append(asyncio.get_running_loop().time())
        return await reload()

    sim.supervisor.dispatcher.reloader = counted
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(21, sim.signal(signal.SIGHUP))
    sim.at(25, lambda: _release(sim))
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert calls == [after_start(20), after_start(25)]


def test_a_reload_during_the_backoff_is_the_next_start_s_config(tmp_path: Path) -> None:
    def crash(run: FakeRun) -> None:
        run.sim.after(10, lambda: run.exit(1))

    sim = _reloadable(tmp_path, boots(5.0, then=crash), boots(5.0))
    sim.reload_gate = asyncio.Event()
    sim.at(16, sim.signal(signal.SIGHUP))  # the backoff: 15.5 to 17.5
    sim.at(20, lambda: _release(sim))  # the reload ends after the backoff: the start waits
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[:4] == ["STARTING", "READY", "BACKOFF", "STARTING"]
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--new")]
    assert sim.runs[1].started == after_start(20)


def test_a_stop_while_the_backoff_waits_for_a_reload_ends_it(tmp_path: Path) -> None:
    sim = _reloadable(tmp_path, boots(5.0, then=lambda run: run.sim.after(10, lambda: run.exit(1))))  # fmt: skip
    sim.reload_gate = asyncio.Event()
    sim.at(16, sim.signal(signal.SIGHUP))
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "BACKOFF", "STOPPING", "STOPPED"]
