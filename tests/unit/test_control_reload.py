"""The control API's reload is answered: the loop replies to every caller once the reload it
asked for is taken (saying what it did) or refused (with the problems), records the outcome in
status.json's `last_reload`, and systemd sees RELOADING=1 ... READY=1 around every reload.
Scripted histories in virtual time (tests/supervise_sim.py)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.supervise.control_target import SupervisorControl
from niodoo_supervisor.supervise.incidents import ReloadAsked, ReloadDone, ReloadResult, Reply
from niodoo_supervisor.supervise.status_file import STATUS_FILE
from supervise_sim import EPOCH, START, FakeRun, Sim, boots, sim_config, sim_plan

REFUSAL = "lora.max_lora_rank: 24 is not one of 8, 16"


def _ask_reload(sim: Sim, at: float) -> list[asyncio.Task[CommandResult]]:
    """The control API's reload asked `at` seconds in; the list holds its task."""
    asked: list[asyncio.Task[CommandResult]] = []
    control = SupervisorControl(sim.supervisor)
    sim.at(at, lambda: asked.append(asyncio.ensure_future(control.reload())))
    return asked


def _answer(asked: list[asyncio.Task[CommandResult]]) -> CommandResult:
    (task,) = asked
    assert task.done(), "the reload's caller was never answered"
    return task.result()


def _status(sim: Sim) -> dict[str, object]:
    loaded = json.loads((sim.tmp / "state" / STATUS_FILE).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _reload_notifications(sim: Sim, at: float) -> list[str]:
    """RELOADING=1 and READY=1, in order, sent within a second of `at`."""
    return [
        field
        for sent in sim.notifier.sent
        if START + at <= sent.at < START + at + 1
        for field in sent.fields
        if field in ("RELOADING=1", "READY=1") or field.startswith("MONOTONIC_USEC=")
    ]


def test_a_refused_reload_answers_with_the_problems_and_is_recorded(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_result = ReloadResult(None, None, [REFUSAL, "model.path: no such folder"])
    asked = _ask_reload(sim, 20)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = _answer(asked)
    assert not answer.ok
    assert answer.message == f"refused, the running config stays: {REFUSAL} (and 1 more)"
    assert answer.details["problems"] == [REFUSAL, "model.path: no such folder"]
    last = _status(sim)["last_reload"]
    assert isinstance(last, dict)
    assert abs(last.pop("at") - (EPOCH + 20.0)) < 0.01
    assert last == {
        "ok": False,
        "summary": answer.message,
        "problems": [REFUSAL, "model.path: no such folder"],
    }
    assert len(sim.runs) == 1  # the old config keeps serving


def test_a_refused_reload_is_still_a_reload_to_systemd(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_result = ReloadResult(None, None, [REFUSAL])
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    sent = _reload_notifications(sim, 20)
    assert sent[0] == "RELOADING=1" and sent[1].startswith("MONOTONIC_USEC=")
    assert sent[2:] == ["READY=1"]


def test_an_unchanged_config_answers_unchanged(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3"))
    asked = _ask_reload(sim, 20)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = _answer(asked)
    assert answer.ok and answer.details["outcome"] == "unchanged"
    assert _status(sim)["last_reload"]["ok"] is True  # type: ignore[index]
    sent = _reload_notifications(sim, 20)
    assert sent[0] == "RELOADING=1" and sent[-1] == "READY=1"


def test_a_settings_change_answers_applied_with_the_keys(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    new = sim_config(tmp_path, health={"interval": 2, "timeout": 1})
    sim.reload_result = ReloadResult(new, sim_plan("python3"))
    asked = _ask_reload(sim, 20)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = _answer(asked)
    assert answer.ok and answer.details["outcome"] == "applied"
    assert answer.message == (
        "taken: applied supervisor.health.interval, supervisor.health.timeout without a restart"
    )
    assert len(sim.runs) == 1
    sent = _reload_notifications(sim, 20)
    assert sent[0] == "RELOADING=1" and sent[1].startswith("MONOTONIC_USEC=")
    assert sent[2:] == ["READY=1"]


def test_a_command_line_change_answers_restart_now_and_restarts(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0), boots(5.0)])
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3", "--new"))
    asked = _ask_reload(sim, 20)
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = _answer(asked)
    assert answer.ok and answer.details["outcome"] == "restart_now"
    assert answer.message == "taken: restarting vLLM now (config changed: vLLM command line)"
    assert len(sim.runs) == 2
    # RELOADING=1 at the decision, READY=1 once the new vLLM serves.
    reloading, ready_again = sim.notifier.times("RELOADING=1")[0], sim.notifier.times("READY=1")[1]
    assert reloading < ready_again


def test_a_reload_during_a_backoff_is_answered(tmp_path: Path) -> None:
    def crash(run: FakeRun) -> None:
        run.sim.after(10, lambda: run.exit(1))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=crash), boots(5.0)])
    sim.config = sim_config(tmp_path, restart={"initial_delay": 30, "jitter": 0})
    sim.__post_init__()
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3", "--new"))
    asked = _ask_reload(sim, 20)  # the crash came at 15: backing off until 45.5
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert "BACKOFF" in sim.states()
    answer = _answer(asked)
    assert answer.ok and answer.details["outcome"] == "next_start"
    assert sim.runs[1].argv == ("python3", "--new")


def test_a_caller_asking_during_a_reload_gets_the_next_reading(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_gate = asyncio.Event()
    sim.reload_result = ReloadResult(None, None, [REFUSAL])
    first = _ask_reload(sim, 20)
    second = _ask_reload(sim, 22)  # the file is read once more after the first reading

    def fixed() -> None:
        assert sim.reload_gate is not None
        sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3"))
        sim.reload_gate.set()

    sim.at(25, fixed)  # the first reading ends with the fixed file too, then the second
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert _answer(first).ok and _answer(second).ok
    assert len([r for r in sim.logs if r["event"] == "reload_requested"]) == 2


def test_a_sighup_during_a_control_reload_still_reads_the_file_again(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_gate = asyncio.Event()
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3"))
    asked = _ask_reload(sim, 20)
    sim.at(21, sim.signal(signal.SIGHUP))
    sim.at(25, sim.reload_gate.set)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert _answer(asked).ok
    assert len([r for r in sim.logs if r["event"] == "reload_requested"]) == 2


def test_a_stop_answers_a_reload_still_under_way(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.reload_gate = asyncio.Event()  # never set: the reload never ends
    sim.reload_result = ReloadResult(sim_config(tmp_path), sim_plan("python3"))
    replies: list[Reply] = []

    def ask() -> None:  # the reply itself: the loop ends before its caller could run again
        replies.append(asyncio.get_running_loop().create_future())
        sim.supervisor.dispatcher.post(ReloadAsked(replies[0]))

    sim.at(20, ask)
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = replies[0].result()
    assert not answer.ok and answer.message == "the supervisor is stopping"


def test_readiness_is_ready_and_not_draining(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    control = SupervisorControl(sim.supervisor)
    seen: list[tuple[bool, str]] = []
    sim.at(2, lambda: seen.append(control.readiness()))
    sim.at(10, lambda: seen.append(control.readiness()))

    def draining() -> None:
        sim.supervisor.reporter.status.drain = {"since": EPOCH + 12}
        seen.append(control.readiness())

    sim.at(12, draining)
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    (starting, ready, drained) = seen
    assert not starting[0] and starting[1].startswith("STARTING")
    assert ready == (True, "ready: serving tiny")
    assert drained == (False, "draining before a planned restart")
    assert control.status()["source"] == "daemon"


def test_a_restart_held_for_a_window_answers_pending(tmp_path: Path) -> None:
    windows = [{"start": "23:00", "end": "23:30", "tz": "UTC"}]  # closed at EPOCH (22:13 UTC)
    sim = Sim(tmp_path, scripts=[boots(5.0)], config=sim_config(tmp_path, windows=windows))
    new = sim_config(tmp_path, windows=windows)
    sim.reload_result = ReloadResult(new, sim_plan("python3", "--new"))
    asked = _ask_reload(sim, 20)
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = _answer(asked)
    assert answer.ok and answer.details["outcome"] == "restart_pending"
    assert answer.message.startswith("taken: serving; restart pending at ")
    assert "config changed: vLLM command line" in answer.message
    assert len(sim.runs) == 1  # the old vLLM keeps serving


def test_a_reload_cannot_move_the_state_folder(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    (tmp_path / "elsewhere").mkdir()
    moved = sim_config(tmp_path / "elsewhere")
    sim.reload_result = ReloadResult(moved, sim_plan("python3"))
    asked = _ask_reload(sim, 20)
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    answer = _answer(asked)
    assert not answer.ok
    assert answer.message.startswith("refused, the running config stays: supervisor.state_dir: ")
    assert "change it with `systemctl restart`" in answer.message
    assert len(sim.runs) == 1 and _status(sim)["last_reload"]["ok"] is False  # type: ignore[index]


def test_a_reload_result_queued_as_the_backoff_ends_is_the_next_starts_config(
    tmp_path: Path,
) -> None:
    new = ReloadResult(sim_config(tmp_path), sim_plan("python3", "--new"))

    def crash(run: FakeRun) -> None:
        def exit_then_reloaded() -> None:
            run.exit(1)
            # The reload's result lands behind the exit: the watcher ends on the exit, and the
            # backoff (none: initial_delay 0) is over before it waits for anything.
            run.sim.supervisor.dispatcher.post(ReloadDone(new))

        run.sim.after(10, exit_then_reloaded)

    sim = Sim(tmp_path, scripts=[boots(5.0, then=crash), boots(5.0)])
    sim.config = sim_config(tmp_path, restart={"initial_delay": 0, "jitter": 0})
    sim.__post_init__()
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    # Started with the new config at once, not with the old one and then restarted for it.
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--new")]
