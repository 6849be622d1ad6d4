"""Every edge of the transition table, driven through the real `Supervisor` by a scripted
history (fake launcher, scripted prober, virtual time): minutes of supervision in
milliseconds. `covers` names the edges a test drives and checks that the history took them;
the last test fails when an edge of `states.ALLOWED` has no test."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.run import DRAIN_MARGIN, LaunchError
from niodoo_supervisor.supervise.states import ALLOWED, IllegalTransition, State
from niodoo_supervisor.supervise.status_file import StatusBoard
from supervise_sim import (
    START,
    FakeRun,
    LoopClock,
    RecordingNotifier,
    Sim,
    after_start,
    boots,
    event,
    sim_config,
    sim_plan,
)

S = State
Edge = tuple[State, State]
COVERED: set[Edge] = set()


def covers(*edges: Edge) -> Callable[[Callable[[Path], Sim]], Callable[[Path], None]]:
    def wrap(test: Callable[[Path], Sim]) -> Callable[[Path], None]:
        COVERED.update(edges)

        @functools.wraps(test)
        def checked(tmp_path: Path) -> None:
            sim = test(tmp_path)
            missing = set(edges) - sim.edges()
            assert not missing, f"the history did not take {missing}: {sim.states()}"

        return checked

    return wrap


def crash_after(seconds: float, code: int = 1) -> Callable[[FakeRun], None]:
    return lambda run: run.sim.after(seconds, lambda: run.exit(code))


# --- starting and stopping --------------------------------------------------------------------


@covers((S.STOPPED, S.STARTING), (S.STARTING, S.READY), (S.READY, S.STOPPING),
        (S.STOPPING, S.STOPPED))  # fmt: skip
def test_a_healthy_start_becomes_ready_and_a_stop_ends_it(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    run = sim.runs[0]
    starting = sim.transition("STARTING")
    assert (starting["vllm_pid"], starting["reason"]) == (run.pid, "launched vLLM")
    assert run.serving  # /health answered: the pump no longer believes fatal lines
    assert run.stopped_at == after_start(60)
    assert sim.transition("STOPPING")["reason"] == "SIGTERM received"
    assert sim.notifier.times("READY=1") and sim.notifier.times("STOPPING=1")
    return sim


@covers((S.STOPPED, S.STOPPING))
def test_a_stop_before_the_first_start_launches_nothing(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[boots()])
    assert sim.play(early=(signal.SIGTERM,)) == 0
    assert sim.states() == ["STOPPING", "STOPPED"] and sim.runs == []
    return sim


@covers((S.STOPPED, S.FATAL))
def test_vllm_that_cannot_be_executed_is_fatal_with_its_exit_code(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[LaunchError("cannot execute python3: no such file", 78)])
    assert sim.play() == 78
    assert sim.states() == ["FATAL"]
    assert sim.transition("FATAL")["reason"] == "cannot execute python3: no such file"
    return sim


@covers((S.STARTING, S.FATAL))
def test_a_fatal_line_while_starting_is_fatal_at_once(tmp_path: Path) -> Sim:
    line = event("lora_rank_too_big", Action.FATAL, "LoRA rank 64 is greater than 16")
    sim = Sim(tmp_path, scripts=[lambda run: run.sim.after(3, lambda: run.say("rank", line))])
    assert sim.play() == 78
    assert sim.states() == ["STARTING", "FATAL"]
    assert sim.transition("FATAL")["reason"] == "lora_rank_too_big: LoRA rank 64 is greater than 16"
    assert sim.runs[0].stopped_at == after_start(3)  # ended at once, not after a timeout
    assert sim.supervisor.reporter.status.last_crash is not None
    return sim


def test_an_argparse_exit_while_starting_is_fatal(tmp_path: Path) -> None:
    def usage_error(run: FakeRun) -> None:
        run.say("error: unrecognized arguments: --bogus")
        run.sim.after(0.5, lambda: run.exit(2))

    sim = Sim(tmp_path, scripts=[usage_error])
    assert sim.play() == 78
    assert sim.states() == ["STARTING", "FATAL"] and len(sim.runs) == 1
    reason = sim.transition("FATAL")["reason"]
    assert reason.endswith(
        "a command-line (argparse) error; error: unrecognized arguments: --bogus"
    )


def test_a_fatal_line_read_while_vllm_exits_is_fatal(tmp_path: Path) -> None:
    # The line is read after the exit is reported (the pipe is drained): still FATAL, decided
    # by the watcher like any other fatal line.
    line = event("lora_rank_too_big", Action.FATAL, "LoRA rank 64 is greater than 16")

    def exits_then_says(run: FakeRun) -> None:
        def exit_first() -> None:
            run.leave_in_pipe("rank", line)
            run.exit(1)

        run.sim.after(2, exit_first)

    sim = Sim(tmp_path, scripts=[exits_then_says])
    assert sim.play() == 78
    assert sim.states() == ["STARTING", "FATAL"]


@covers((S.STARTING, S.BACKOFF), (S.BACKOFF, S.STARTING))
def test_a_crash_while_starting_backs_off_and_starts_again(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[crash_after(3), boots(5.0)])
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "BACKOFF", "STARTING", "READY", "STOPPING", "STOPPED"]
    assert sim.transition("BACKOFF")["reason"] == "vLLM exited with code 1"
    assert sim.runs[1].started == after_start(3 + sim.stop_takes + 2.0)  # initial_delay, no jitter
    assert sim.supervisor.reporter.status.restarts == 1
    return sim


@covers((S.STARTING, S.STOPPING))
def test_a_stop_while_starting_ends_vllm(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[boots(50.0)])
    sim.at(10, sim.signal(signal.SIGINT))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "STOPPING", "STOPPED"]
    assert sim.runs[0].stopped_at == after_start(10)
    return sim


def test_a_start_that_never_gets_ready_fails_at_the_startup_timeout(tmp_path: Path) -> None:
    def busy_forever(run: FakeRun) -> None:
        for second in range(1, 700, 10):
            run.sim.after(second, lambda: run.say("still loading"))

    config = sim_config(tmp_path, health={"startup_interval": 10})
    sim = Sim(tmp_path, scripts=[busy_forever], config=config)
    sim.at(700, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    backoff = sim.transition("BACKOFF")
    assert backoff["reason"].startswith("not ready within startup_timeout (600s)")


def test_a_silent_start_fails_at_the_stall_timeout(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[lambda run: None])
    sim.at(121.5, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    backoff = sim.transition("BACKOFF")
    assert backoff["reason"].startswith("vLLM wrote nothing for 12")
    assert backoff["reason"].endswith("s while starting (startup_stall_timeout 120s)")
    # While it made progress, systemd's start timeout was kept ahead of it.
    assert sim.notifier.times("EXTEND_TIMEOUT_USEC=")


# --- ready, unhealthy, crashed ----------------------------------------------------------------


@covers((S.READY, S.UNHEALTHY), (S.UNHEALTHY, S.READY))
def test_one_failed_check_is_unhealthy_and_a_passing_one_ready_again(tmp_path: Path) -> Sim:
    def blip(run: FakeRun) -> None:
        sim = run.sim
        sim.after(12, lambda: setattr(sim.server, "health", 503))
        sim.after(22, lambda: setattr(sim.server, "health", 200))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=blip)])
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "UNHEALTHY", "READY", "STOPPING", "STOPPED"]
    assert sim.transition("UNHEALTHY")["reason"] == "check failed (1/3): /health: HTTP 503"
    return sim


@covers((S.UNHEALTHY, S.BACKOFF))
def test_failed_checks_up_to_the_threshold_restart_vllm(tmp_path: Path) -> Sim:
    def hangs(run: FakeRun) -> None:
        run.sim.after(12, lambda: setattr(run.sim.server, "hang", True))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=hangs), boots(5.0)])
    sim.at(120, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "BACKOFF"]
    assert sim.transition("BACKOFF")["reason"] == "3 failed checks in a row: /health: timed out"
    return sim


def test_an_adapter_that_vanishes_is_a_failure(tmp_path: Path) -> None:
    def drops_a(run: FakeRun) -> None:
        run.sim.after(12, lambda: setattr(run.sim.server, "missing", ("a",)))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=drops_a), boots(5.0)])
    sim.at(120, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "BACKOFF"]
    assert sim.transition("UNHEALTHY")["reason"] == "check failed (1/3): /v1/models: missing a"
    assert sim.transition("BACKOFF")["reason"] == "3 failed checks in a row: /v1/models: missing a"


@covers((S.UNHEALTHY, S.STOPPING))
def test_a_stop_while_unhealthy_ends_vllm(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[boots(5.0, then=lambda run: run.sim.after(6, lambda: setattr(run.sim.server, "health", 500)))])  # fmt: skip
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "UNHEALTHY", "STOPPING", "STOPPED"]
    return sim


@covers((S.READY, S.BACKOFF))
def test_a_crash_after_ready_restarts_with_a_crash_report(tmp_path: Path) -> Sim:
    def crash(run: FakeRun) -> None:
        def traceback_and_exit() -> None:
            run.say("Traceback (most recent call last):")
            run.exit(1)

        run.sim.after(30, traceback_and_exit)

    sim = Sim(tmp_path, scripts=[boots(5.0, then=crash), boots(5.0)])
    sim.at(100, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[:5] == ["STARTING", "READY", "BACKOFF", "STARTING", "READY"]
    report = sim.event("crash_report")
    assert report is not None and "Traceback" in report["last_lines"]
    return sim


def test_exit_zero_without_being_asked_is_a_crash(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0, then=crash_after(10, 0)), boots(5.0)])
    sim.at(100, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    reason = sim.transition("BACKOFF")["reason"]
    assert reason == "vLLM exited with code 0 without being asked to stop (vLLM exits 0 when its engine dies)"  # fmt: skip


@covers((S.BACKOFF, S.STOPPING))
def test_a_stop_during_the_backoff_ends_it_at_once(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[crash_after(3), boots()])
    sim.at(4.0, sim.signal(signal.SIGTERM))  # the backoff runs from 3.5 to 5.5
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "BACKOFF", "STOPPING", "STOPPED"] and len(sim.runs) == 1
    assert sim.transition("STOPPING")["reason"] == "stop requested during backoff"
    return sim


@covers((S.BACKOFF, S.FATAL))
def test_a_crash_loop_ends_in_fatal_69(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[crash_after(1)] * 10)
    assert sim.play() == 69
    assert len(sim.runs) == 5 and sim.states()[-2:] == ["BACKOFF", "FATAL"]
    assert sim.transition("FATAL")["reason"].startswith(
        "crash loop: 5 starts within 900s; last: exited with code 1"
    )
    return sim


# --- planned restarts (a reload that changes vLLM's command line) -------------------------------


def _port_reload(sim: Sim, tmp_path: Path) -> None:
    sim.reload_result = ReloadResult(
        sim_config(tmp_path, port=8001), sim_plan("python3", "--port", "8001")
    )


@covers((S.STOPPING, S.STARTING))
def test_a_reload_that_changes_the_command_line_is_a_planned_restart(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[boots(5.0), boots(5.0)])
    _port_reload(sim, tmp_path)
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STARTING", "READY", "STOPPING", "STOPPED"]  # fmt: skip
    planned = sim.transition("STOPPING")
    assert (planned["old"], planned["reason"]) == ("READY", "config changed: server.port")
    assert planned["planned_restart"] is True
    restart = sim.event("reload_restart")
    assert restart is not None and restart["keys"] == ["server.port"]
    assert restart["changes"] == ["server.port: 8000 -> 8001"]
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--port", "8001")]
    assert sim.runs[1].started == after_start(20 + sim.stop_takes)  # no backoff delay
    assert sim.supervisor.reporter.status.restarts == 0  # not a crash
    assert sim.event("crash_report") is None
    assert not any("STOPPING=1" in n.fields for n in sim.notifier.sent if n.at < START + 59)
    return sim


def test_a_planned_restart_waits_out_the_drain_the_running_vllm_was_launched_with(
    tmp_path: Path,
) -> None:
    # The new config drops `shutdown_timeout`, but the running vLLM drains for 30 s on
    # SIGTERM: its stop must not signal the group (engine included) before that.
    sim = Sim(
        tmp_path,
        scripts=[boots(5.0), boots(5.0)],
        config=sim_config(tmp_path, server={"shutdown_timeout": 30}),
    )
    sim.reload_result = ReloadResult(
        sim_config(tmp_path, port=8001), sim_plan("python3", "--port", "8001")
    )
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert [run.stop_grace for run in sim.runs] == [30 + DRAIN_MARGIN, 15.0]


@covers((S.STOPPING, S.FATAL))
def test_a_planned_restart_whose_vllm_cannot_be_executed_is_fatal(tmp_path: Path) -> Sim:
    sim = Sim(tmp_path, scripts=[boots(5.0), LaunchError("cannot execute python3: gone", 78)])
    _port_reload(sim, tmp_path)
    sim.at(20, sim.signal(signal.SIGHUP))
    assert sim.play() == 78
    assert sim.states() == ["STARTING", "READY", "STOPPING", "FATAL"]
    assert sim.transition("FATAL")["reason"] == "cannot execute python3: gone"
    return sim


def test_a_stop_during_a_planned_restart_starts_nothing(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0), boots(5.0)])
    _port_reload(sim, tmp_path)
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(20.2, sim.signal(signal.SIGTERM))  # while the old vLLM is being stopped
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"] and len(sim.runs) == 1
    assert sim.notifier.times("STOPPING=1")


def test_backoff_grows_and_a_long_ready_stretch_resets_it(tmp_path: Path) -> None:
    long_ready = boots(5.0, then=crash_after(400))
    sim = Sim(tmp_path, scripts=[crash_after(1), crash_after(1), long_ready, crash_after(1)])
    sim.at(420, sim.signal(signal.SIGTERM))  # in the backoff after the fourth run
    sim.play()
    gaps = [later.started - (earlier.stopped_at or 0) - sim.stop_takes
            for earlier, later in zip(sim.runs, sim.runs[1:], strict=False)]  # fmt: skip
    assert gaps[:3] == pytest.approx(
        [2.0, 4.0, 2.0]
    )  # 400 s ready (> reset_after 300) started the backoff over


def test_watchdog_is_fed_during_a_long_backoff(tmp_path: Path) -> None:
    config = sim_config(tmp_path, restart={"initial_delay": 60, "jitter": 0})
    sim = Sim(tmp_path, scripts=[crash_after(1), boots()], config=config)
    sim.at(50, sim.signal(signal.SIGTERM))
    sim.play()
    pings = [at - START for at in sim.notifier.times("WATCHDOG=1")]
    assert [round(at, 1) for at in pings if 2 < at < 50] == [6.5, 11.5, 16.5, 21.5, 26.5, 31.5, 36.5, 41.5, 46.5]  # fmt: skip


# --- a stopped run's late lines -----------------------------------------------------------------


def test_late_lines_of_a_stopped_run_steer_nothing(tmp_path: Path) -> None:
    line = event("lora_rank_too_big", Action.FATAL, "LoRA rank 64 is greater than 16")

    def crash_then_late_line(run: FakeRun) -> None:
        run.sim.after(3, lambda: run.exit(1))
        run.sim.after(6, lambda: run.say("late", line))  # during the next run's start

    sim = Sim(tmp_path, scripts=[crash_then_late_line, boots(5.0)])
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert "FATAL" not in sim.states() and sim.states()[-1] == "STOPPED"
    assert sim.supervisor.reporter.counters.rules["lora_rank_too_big"] == 1  # counted all the same


def test_event_records_are_rate_limited_and_all_counted(tmp_path: Path) -> None:
    def chatty(run: FakeRun) -> None:
        ignored = event("ignored_request_fields", Action.LOG, "fields ignored")
        run.sim.after(6, lambda: run.say("x", *[ignored] * 50))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=chatty)])
    sim.at(100, sim.signal(signal.SIGTERM))
    sim.play()
    logged = [r for r in sim.logs if r["event"] == "vllm_event" and r["rule"] == "ignored_request_fields"]  # fmt: skip
    assert len(logged) == 20
    assert sim.supervisor.reporter.counters.rules["ignored_request_fields"] == 50


def test_an_illegal_transition_raises(tmp_path: Path) -> None:
    reporter = Reporter(RecordingNotifier(), LoopClock(), tmp_path, StatusBoard(), EventCounters())
    with pytest.raises(IllegalTransition, match="STOPPED -> READY: not in the transition table"):
        reporter.transition({S.STOPPED}, S.READY, "no")
    with pytest.raises(IllegalTransition, match="STOPPED -> STARTING: expected to leave"):
        reporter.transition({S.BACKOFF}, S.STARTING, "no")
    assert reporter.state is S.STOPPED


def test_every_edge_of_the_table_has_a_test() -> None:
    edges = {(old, new) for old, targets in ALLOWED.items() for new in targets}
    assert edges - COVERED == set()
    assert COVERED - edges == set()
