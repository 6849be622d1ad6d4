"""What a history tells systemd and status.json, and the liveness rules no edge shows:
scripted histories in virtual time (the settings of `supervise_sim.SETTINGS`)."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from niodoo_supervisor.logs.rule_types import Action
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.status_file import STATUS_FILE
from supervise_sim import (
    EPOCH,
    START,
    FakeRun,
    Script,
    Sim,
    after_start,
    boots,
    event,
    sim_config,
    sim_plan,
)


def _statuses(sim: Sim) -> list[str]:
    return [f for n in sim.notifier.sent for f in n.fields if f.startswith("STATUS=")]


def _set_health(at: float, health: int | None) -> Script:
    return lambda run: run.sim.after(at, lambda: setattr(run.sim.server, "health", health))


def test_systemd_is_told_each_step_of_a_start_a_blip_and_a_restart(tmp_path: Path) -> None:
    def blip_then_crash(run: FakeRun) -> None:
        _set_health(12, 503)(run)
        _set_health(22, 200)(run)
        run.sim.after(40, lambda: run.exit(1))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=blip_then_crash), boots(5.0)])
    sim.at(100, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    statuses = _statuses(sim)
    assert statuses[:3] == [
        "STATUS=starting vLLM (pid 4000)",
        "STATUS=starting vLLM: HTTP server starting on http://127.0.0.1:8000 (5 s)",
        "STATUS=ready: serving tiny with adapters a, b on 127.0.0.1:8000",
    ]
    assert "STATUS=unhealthy (1/3): /health: HTTP 503" in statuses
    assert "STATUS=restarting vLLM in 2s: vLLM exited with code 1" in statuses
    # While it loads, every probe keeps systemd's start timeout ahead (stall 120 s + 2 probes).
    extended = sim.notifier.times("EXTEND_TIMEOUT_USEC=122000000")
    assert [round(at - START) for at in extended[:4]] == [0, 1, 2, 3]
    assert set(extended[:4]) <= set(sim.notifier.times("WATCHDOG=1"))
    # A stop extends it by the grace period (15 s) and the SIGKILL check (20 s).
    assert sim.notifier.times("EXTEND_TIMEOUT_USEC=35000000")[-1] == after_start(100)


def test_status_json_shows_the_last_check_while_starting(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(50.0)])
    written: list[dict[str, object]] = []
    status_file = tmp_path / "state" / STATUS_FILE
    sim.at(10.5, lambda: written.append(json.loads(status_file.read_text())))
    sim.at(20, sim.signal(signal.SIGTERM))
    sim.play()
    (at_10,) = written
    assert at_10["state"] == "STARTING"
    last_check = at_10["last_check"]
    assert isinstance(last_check, dict) and last_check["reason"] == "/health: connection refused"
    assert last_check["at"] == pytest.approx(EPOCH + 10.0, abs=0.1)  # the virtual clock's


def test_a_refused_reload_says_so_to_systemd(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_result = ReloadResult(None, None, ["a", "b"])
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(40, sim.signal(signal.SIGTERM))
    sim.play()
    assert "STATUS=reload refused (2 problem(s)); still running the old config" in _statuses(sim)


def test_a_reload_takes_the_new_restart_settings(tmp_path: Path) -> None:
    # (A reload that moves the state folder is refused: test_control_reload.py.)
    sim = Sim(tmp_path, scripts=[boots(5.0, then=lambda run: run.sim.after(20, lambda: run.exit(1))), boots(5.0)])  # fmt: skip
    new = sim_config(tmp_path, restart={"initial_delay": 7, "jitter": 0})
    sim.reload_result = ReloadResult(new, replace(sim_plan("python3"), vllm_version="0.99.1"))
    sim.at(10, sim.signal(signal.SIGHUP))  # the reload restarts the first run
    sim.at(100, sim.signal(signal.SIGTERM))
    sim.play()
    crashed, restarted = sim.runs[1:3]  # the new config's first run crashes at 30 s
    assert crashed.stopped_at is not None
    delay = restarted.started - crashed.stopped_at - sim.stop_takes
    assert delay == pytest.approx(7.0, abs=1e-6)  # the new initial_delay, not 2 s
    status = json.loads((tmp_path / "state" / STATUS_FILE).read_text())
    assert status["vllm_version"] == "0.99.1"


# --- liveness -----------------------------------------------------------------------------------


def test_failed_checks_count_in_a_row_a_passing_one_starts_over(tmp_path: Path) -> None:
    def flaky(run: FakeRun) -> None:  # checks at 5, 15, 25, ...: fail, fail, pass, fail, fail
        for at, health in ((12, 503), (32, 200), (42, 503), (62, 200)):
            _set_health(at, health)(run)

    sim = Sim(tmp_path, scripts=[boots(5.0, then=flaky)])
    sim.at(90, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert "BACKOFF" not in sim.states() and sim.states().count("UNHEALTHY") == 2


def test_a_fatal_line_once_ready_is_not_fatal(tmp_path: Path) -> None:
    # The pump stops calling lines fatal once vLLM answers HTTP; the watcher decides on its own.
    line = event("lora_rank_too_big", Action.FATAL, "LoRA rank 64 is greater than 16")
    sim = Sim(tmp_path, scripts=[boots(5.0, then=lambda run: run.sim.after(10, lambda: run.say("x", line)))])  # fmt: skip
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]


def test_any_http_answer_while_starting_marks_vllm_serving(tmp_path: Path) -> None:
    def answers_503(run: FakeRun) -> None:
        run.sim.after(3, lambda: setattr(run.sim, "server", type(run.sim.server)(health=503)))

    sim = Sim(tmp_path, scripts=[answers_503])
    sim.at(10, sim.signal(signal.SIGTERM))
    sim.play()
    assert sim.runs[0].serving


def test_a_stop_does_not_wait_for_a_hung_probe(tmp_path: Path) -> None:
    def hangs(run: FakeRun) -> None:
        run.sim.after(12, lambda: setattr(run.sim.server, "hang", True))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=hangs)])
    sim.at(26, sim.signal(signal.SIGTERM))  # the probe of 25 s would answer at 30 s
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(26)


def test_an_engine_death_line_while_starting_does_not_hurry_later_checks(tmp_path: Path) -> None:
    death = event("engine_fatal_error", Action.CHECK_NOW, "EngineCore encountered a fatal error.")

    def blips_once_ready(run: FakeRun) -> None:
        _set_health(0.05, 503)(run)  # before the first check after READY (5.1 s)
        _set_health(2, 200)(run)

    sim = Sim(tmp_path, scripts=[boots(5.0, then=blips_once_ready)])
    sim.at(2.5, lambda: sim.runs[0].say("x", death))
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    # The 503 after READY is one failed check, not an engine death confirmed.
    assert sim.states() == ["STARTING", "READY", "UNHEALTHY", "READY", "STOPPING", "STOPPED"]


def test_each_check_records_vllm_s_processes(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.at(40, sim.signal(signal.SIGTERM))
    sim.play()
    assert sim.runs[0].processes_recorded >= 8


def test_lines_written_while_a_reload_stops_vllm_steer_nothing(tmp_path: Path) -> None:
    line = event("lora_rank_too_big", Action.FATAL, "LoRA rank 64 is greater than 16")
    sim = Sim(tmp_path, scripts=[boots(5.0), boots(5.0)])
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3", "--new"))
    sim.at(20, sim.signal(signal.SIGHUP))  # a new command line: vLLM restarts
    sim.at(20.2, lambda: sim.runs[0].say("late", line))  # while it is being stopped
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[-3:] == ["READY", "STOPPING", "STOPPED"] and len(sim.runs) == 2
