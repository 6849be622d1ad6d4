"""Readiness without lag, and a start that hangs right after listening. Scripted histories in
virtual time: the start-up probe interval is 1 s, the probe timeout 5 s, the threshold 3."""

from __future__ import annotations

import signal
from pathlib import Path

from niodoo_supervisor.supervise.watcher import FAST_PROBES
from supervise_sim import START, FakeRun, Script, Server, Sim, boots

_UP = 5.37  # off the 1 s probe cycle on purpose


def _ready_lag(sim: Sim, ready_at: float) -> float:
    (ready,) = sim.notifier.times("READY=1")
    return ready - (START + ready_at)


def _up_at(at: float, missing: tuple[str, ...] = (), log_line: bool = True) -> Script:
    def script(run: FakeRun) -> None:
        sim = run.sim
        for second in range(1, 60):
            sim.after(second * 0.5, lambda: run.say("loading"))
        if log_line:
            sim.after(at, lambda: sim.serve(run, missing))
        else:
            sim.after(at, lambda: setattr(sim, "server", Server(200, False, missing)))

    return script


def test_ready_follows_the_server_starting_within_a_tenth_of_a_second(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[_up_at(_UP)])
    sim.at(30, sim.signal(signal.SIGTERM))
    sim.play()
    assert 0 < _ready_lag(sim, _UP) <= 0.1  # was up to the 1 s start-up interval


def test_ready_follows_the_last_adapter_within_a_tenth_of_a_second(tmp_path: Path) -> None:
    listed = 7.23

    def adapters_late(run: FakeRun) -> None:
        _up_at(_UP, missing=("b",))(run)
        run.sim.after(listed, lambda: setattr(run.sim.server, "missing", ()))

    sim = Sim(tmp_path, scripts=[adapters_late])
    sim.at(30, sim.signal(signal.SIGTERM))
    sim.play()
    assert 0 < _ready_lag(sim, listed) <= 0.1
    fast = [at - START for at in sim.probes if START + _UP <= at < START + listed]
    assert len(fast) >= 15  # every 0.1 s once the server was up


def test_fast_probes_end_when_an_adapter_is_never_listed(tmp_path: Path) -> None:
    # Each start-up probe also writes status.json and pings systemd: a server that listens but
    # never lists an adapter goes back to the 1 s start-up interval after FAST_PROBES.
    sim = Sim(tmp_path, scripts=[_up_at(_UP, missing=("b",))])
    sim.at(40, sim.signal(signal.SIGTERM))
    sim.play()
    assert "READY" not in [t["new"] for t in sim.transitions()]
    after_up = [at - START - _UP for at in sim.probes if at >= START + _UP]
    fast = [at for at in after_up if at < 15]
    late = [at for at in after_up if 20 <= at < 30]
    assert FAST_PROBES <= len(fast) <= FAST_PROBES + 6  # the fast ones, then 1 s apart
    assert 9 <= len(late) <= 11


def test_without_the_log_line_the_first_answer_starts_the_fast_probes(tmp_path: Path) -> None:
    listed = 7.23

    def quiet(run: FakeRun) -> None:
        _up_at(_UP, missing=("b",), log_line=False)(run)
        run.sim.after(listed, lambda: setattr(run.sim.server, "missing", ()))

    sim = Sim(tmp_path, scripts=[quiet])
    sim.at(30, sim.signal(signal.SIGTERM))
    sim.play()
    assert 0 < _ready_lag(sim, listed) <= 0.1


def test_a_server_hanging_right_after_listening_is_restarted_after_the_threshold(
    tmp_path: Path,
) -> None:
    def hangs(run: FakeRun) -> None:
        _up_at(_UP, missing=("b",))(run)
        run.sim.after(_UP + 0.5, lambda: setattr(run.sim.server, "hang", True))

    sim = Sim(tmp_path, scripts=[hangs, boots(5.0)])
    sim.at(200, sim.signal(signal.SIGTERM))
    sim.play()
    backoff = sim.transition("BACKOFF")
    assert backoff["reason"] == (
        "3 probes in a row timed out after vLLM had answered /health while starting: "
        "/health: timed out"
    )
    stopped = sim.runs[0].stopped_at
    assert stopped is not None and stopped - START < _UP + 0.5 + 3 * (5 + 0.1) + 0.1
    # (it used to wait for startup_stall_timeout, 120 s, after its last line: ~150 s here)
    assert sim.states()[-1] == "STOPPED" and sim.states().count("READY") == 1


def test_probe_timeouts_before_any_answer_do_not_count(tmp_path: Path) -> None:
    # A port that accepts but where nothing answers yet (vLLM binds its socket early).
    def hangs_from_the_start(run: FakeRun) -> None:
        _up_at(100.0)(run)
        run.sim.server.hang = True

    sim = Sim(tmp_path, scripts=[hangs_from_the_start])
    sim.at(25, sim.signal(signal.SIGTERM))
    sim.play()
    assert sim.states() == ["STARTING", "STOPPING", "STOPPED"]


def test_a_models_list_that_never_answers_after_health_is_restarted_after_the_threshold(
    tmp_path: Path,
) -> None:
    # /health answers, /v1/models hangs: its time-outs are probe time-outs too.
    def models_hang(run: FakeRun) -> None:
        _up_at(_UP, missing=("b",))(run)
        run.sim.after(_UP + 0.5, lambda: setattr(run.sim.server, "hang_models", True))

    sim = Sim(tmp_path, scripts=[models_hang, boots(5.0)])
    sim.at(200, sim.signal(signal.SIGTERM))
    sim.play()
    assert sim.transition("BACKOFF")["reason"] == (
        "3 probes in a row timed out after vLLM had answered /health while starting: "
        "/v1/models: timed out"
    )
    stopped = sim.runs[0].stopped_at
    assert stopped is not None and stopped - START < _UP + 0.5 + 3 * (5 + 0.1) + 0.1


def test_probe_time_outs_count_only_in_a_row(tmp_path: Path) -> None:
    # Two time-outs, an answer, two time-outs, an answer...: never three in a row.
    def flaky(run: FakeRun) -> None:
        _up_at(_UP, missing=("b",))(run)
        for start in range(6, 60, 12):
            run.sim.after(start, lambda: setattr(run.sim.server, "hang", True))
            run.sim.after(start + 9, lambda: setattr(run.sim.server, "hang", False))

    sim = Sim(tmp_path, scripts=[flaky])
    sim.at(62, sim.signal(signal.SIGTERM))
    sim.play()
    assert sim.states() == ["STARTING", "STOPPING", "STOPPED"]
