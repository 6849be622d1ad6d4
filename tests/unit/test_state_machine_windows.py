"""Maintenance windows acted on: a change that needs a restart while no window is open is
held (a pending restart) and carried out once at the next opening; `restart --now` and
`--at-next-window`. Scripted histories in virtual time (the wall clock starts at EPOCH,
Tuesday 2023-11-14 22:13:20 UTC, unless a history sets its own)."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.supervise.incidents import ReloadResult, RestartAsked
from niodoo_supervisor.supervise.status_file import STATUS_FILE
from supervise_sim import EPOCH, START, Sim, boots, sim_config, sim_plan

# Daily 23:00-23:30 UTC: closed at EPOCH, opens 2800 s after the history starts.
DAILY = [{"start": "23:00", "end": "23:30", "tz": "UTC"}]
OPENS = 2800.0
# Open at EPOCH (22:13:20 UTC) until 23:00.
OPEN_NOW = [{"start": "22:00", "end": "23:00", "tz": "UTC"}]


def at(seconds: float) -> Any:
    """`seconds` after the history started; the window arithmetic runs on the wall clock."""
    return pytest.approx(START + seconds, abs=1e-3)


def windowed(tmp_path: Path, windows: list[dict[str, Any]] | None, epoch: float = EPOCH) -> Sim:
    config = sim_config(tmp_path, windows=windows)
    return Sim(tmp_path, scripts=[boots(5.0)] * 4, config=config, epoch=epoch)


def reload_to(sim: Sim, when: float, *argv: str, windows: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    """A SIGHUP at `when` whose config launches `python3 *argv` (the same windows)."""
    config = sim_config(sim.tmp, windows=DAILY if windows is None else windows)
    result = ReloadResult(config, sim_plan("python3", *argv))
    sim.at(when - 0.5, lambda: setattr(sim, "reload_result", result))
    sim.at(when, sim.signal(signal.SIGHUP))


def ask_restart(sim: Sim, when: float, *, now: bool) -> list[CommandResult]:
    """`niodoo-supervisor restart` at `when`; the list gets its answer."""
    answers: list[CommandResult] = []

    def post() -> None:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        reply.add_done_callback(lambda done: answers.append(done.result()))
        sim.supervisor.dispatcher.post(RestartAsked(now, reply))

    sim.at(when, post)
    return answers


def snapshot(sim: Sim, when: float) -> list[Any]:
    """status.json's pending_restart as it stands at `when`."""
    seen: list[Any] = []
    sim.at(when, lambda: seen.append(sim.supervisor.reporter.status.pending_restart))
    return seen


def statuses(sim: Sim) -> list[str]:
    return [f for n in sim.notifier.sent for f in n.fields if f.startswith("STATUS=")]


def test_a_change_outside_a_window_is_pending_and_carried_out_once_at_the_opening(
    tmp_path: Path,
) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--new")
    pending = snapshot(sim, 30)
    after = snapshot(sim, OPENS + 30)
    sim.at(OPENS + 600, sim.signal(signal.SIGTERM))  # 20 checks inside the window
    assert sim.play() == 0
    # The old vLLM kept serving until the opening; then one planned restart, no crash.
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--new")]
    assert sim.runs[0].stopped_at == at(OPENS)
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STARTING", "READY", "STOPPING", "STOPPED"]  # fmt: skip
    stopping = sim.transition("STOPPING")
    assert stopping["planned_restart"] is True
    assert stopping["reason"] == (
        "maintenance window daily 23:00-23:30 UTC open: config changed: vLLM command line"
    )
    assert sim.supervisor.reporter.status.restarts == 0
    assert pending == [
        {
            "since": pytest.approx(1_700_000_020.0, abs=1e-3),
            "reason": "config changed: vLLM command line",
            "keys": ["vLLM command line"],
            "changes": ["vLLM command line: (absent) -> --new"],
            "at": "2023-11-14T23:00:00+00:00",
            "at_epoch": 1_700_002_800.0,
            "window": "daily 23:00-23:30 UTC",
        }
    ]
    assert after == [None]
    event = sim.event("restart_pending")
    assert event is not None and event["at"] == "2023-11-14T23:00:00+00:00"
    assert sim.event("reload_restart")["when"] == "at the next maintenance window"  # type: ignore[index]
    text = "STATUS=serving; restart pending at 2023-11-14T23:00:00+00:00: config changed: vLLM command line"  # fmt: skip
    assert text in statuses(sim)


def test_status_keeps_naming_the_pending_restart_when_checks_pass_again(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--new")
    sim.at(100, lambda: setattr(sim.server, "health", 503))  # one failed check: UNHEALTHY
    sim.at(110, lambda: setattr(sim.server, "health", 200))
    sim.at(200, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "READY"]
    stopping = ("STATUS=stopping", "STATUS=draining")  # the stop at 200 s says these
    last = [text for text in statuses(sim) if not text.startswith(stopping)][-1]
    assert last.startswith("STATUS=serving; restart pending at 2023-11-14T23:00:00+00:00")


def test_a_window_skipped_by_the_spring_forward_jump_opens_at_the_jump(tmp_path: Path) -> None:
    # Europe/Berlin, Sunday 2024-03-31: 02:00 CET jumps to 03:00 CEST at 01:00 UTC, so the
    # 02:00-03:00 window opens at 03:00 CEST for an hour (windows.py's rule).
    saturday_evening = datetime(2024, 3, 30, 23, 0, tzinfo=timezone.utc).timestamp()
    berlin = [{"days": ["sun"], "start": "02:00", "end": "03:00", "tz": "Europe/Berlin"}]
    sim = windowed(tmp_path, berlin, epoch=saturday_evening)
    reload_to(sim, 20, "--new", windows=berlin)
    pending = snapshot(sim, 30)
    sim.at(7300, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert pending[0]["at"] == "2024-03-31T03:00:00+02:00"
    assert pending[0]["window"] == "sun 02:00-03:00 Europe/Berlin"
    assert len(sim.runs) == 2 and sim.runs[0].stopped_at == at(7200)


def test_a_reload_back_to_the_running_config_cancels_the_pending_restart(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--new")
    reload_to(sim, 40)  # the config vLLM runs
    pending = snapshot(sim, 50)
    sim.at(OPENS + 60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 1 and sim.runs[0].stopped_at == at(OPENS + 60)
    assert pending == [None]
    cancelled = sim.event("restart_pending_cancelled")
    assert cancelled is not None and cancelled["cancelled"] == "config changed: vLLM command line"
    assert "STATUS=reloaded: config unchanged, vLLM keeps serving" in statuses(sim)


def test_a_second_change_replaces_what_is_pending(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--first")
    reload_to(sim, 40, "--second")
    pending = snapshot(sim, 50)
    sim.at(OPENS + 60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--second")]
    assert pending[0]["changes"] == ["vLLM command line: (absent) -> --second"]
    assert pending[0]["since"] == pytest.approx(1_700_000_020.0, abs=1e-3)  # first held then
    updates = [r["updated"] for r in sim.logs if r["event"] == "restart_pending"]
    assert updates == [False, True]


def test_probe_settings_apply_at_once_while_a_restart_is_pending(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--new")
    faster = sim_config(tmp_path, windows=DAILY, health={"interval": 2, "timeout": 1})
    result = ReloadResult(faster, sim_plan("python3", "--new"))
    sim.at(39.5, lambda: setattr(sim, "reload_result", result))
    sim.at(40, sim.signal(signal.SIGHUP))
    pending = snapshot(sim, 50)
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 1 and pending[0]["reason"] == "config changed: vLLM command line"
    gaps = [b - a for a, b in itertools.pairwise(at for at in sim.probes if at > START + 40)]
    assert gaps and gaps == [pytest.approx(2.005)] * len(gaps)
    applied = sim.event("reload_applied")
    assert applied is None  # the reload still needs the restart: it is reported as pending
    assert [r["when"] for r in sim.logs if r["event"] == "reload_restart"] == [
        "at the next maintenance window"
    ] * 2


def test_a_crash_while_a_restart_is_pending_restarts_at_once_with_the_new_config(
    tmp_path: Path,
) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--new")
    sim.at(100, lambda: sim.runs[0].exit(1))
    cleared = snapshot(sim, 101)
    sim.at(OPENS + 60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--new")]
    assert sim.runs[1].started == at(102.5)  # stopped, 2 s of backoff: not at the window
    assert "BACKOFF" in sim.states() and cleared == [None]
    event = sim.event("restart_pending_cleared")
    assert (
        event is not None and "restarts at once after: vLLM exited with code 1" in event["reason"]
    )


@pytest.mark.parametrize("windows", [None, OPEN_NOW], ids=["no windows", "window open"])
def test_without_windows_or_inside_one_a_change_restarts_at_once(
    tmp_path: Path, windows: list[dict[str, Any]] | None
) -> None:
    sim = windowed(tmp_path, windows)
    reload_to(sim, 20, "--new", windows=windows or [])
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 2 and sim.runs[0].stopped_at == at(20)
    assert sim.event("restart_pending") is None


def test_restart_now_carries_out_the_pending_restart(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    reload_to(sim, 20, "--new")
    answers = ask_restart(sim, 60, now=True)
    sim.at(OPENS + 60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert [run.argv for run in sim.runs] == [("python3",), ("python3", "--new")]
    assert sim.runs[0].stopped_at == at(60)  # now, and not again at the opening
    assert answers == [
        CommandResult(
            True,
            "restarting vLLM now: asked by the operator (now): config changed: vLLM command line",
        )
    ]
    assert sim.transition("STOPPING")["planned_restart"] is True


@pytest.mark.parametrize(
    ("now", "windows", "reason"),
    [
        (True, None, "asked by the operator (now)"),
        (True, DAILY, "asked by the operator (now)"),  # closed: --now does not wait
        (False, None, "asked by the operator"),  # no windows: any time is the next window
        (False, OPEN_NOW, "asked by the operator"),
    ],
    ids=["now, no windows", "now, window closed", "next window, no windows", "window open"],
)
def test_a_restart_asked_with_nothing_pending_restarts_at_once_unless_it_waits(
    tmp_path: Path, now: bool, windows: list[dict[str, Any]] | None, reason: str
) -> None:
    sim = windowed(tmp_path, windows)
    answers = ask_restart(sim, 60, now=now)
    sim.at(120, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 2 and sim.runs[0].stopped_at == at(60)
    assert answers == [CommandResult(True, f"restarting vLLM now: {reason}")]
    assert "BACKOFF" not in sim.states() and sim.supervisor.reporter.status.restarts == 0


def test_restart_at_the_next_window_is_pending_and_no_reload_cancels_it(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    answers = ask_restart(sim, 60, now=False)
    pending = snapshot(sim, 70)
    reload_to(sim, 80)  # the running config: what the operator asked for stays pending
    sim.at(OPENS + 60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 2 and sim.runs[0].stopped_at == at(OPENS)
    assert pending[0]["reason"] == "asked by the operator" and pending[0]["keys"] == []
    assert answers[0].ok and answers[0].message == "restart pending at 2023-11-14T23:00:00+00:00"
    assert answers[0].details["pending_restart"]["window"] == "daily 23:00-23:30 UTC"
    assert sim.event("restart_pending_cancelled") is None
    assert sim.transition("STOPPING")["reason"] == (
        "maintenance window daily 23:00-23:30 UTC open: asked by the operator"
    )


def test_a_restart_at_the_next_window_asked_during_the_backoff_is_answered(
    tmp_path: Path,
) -> None:
    sim = windowed(tmp_path, DAILY)
    sim.at(100, lambda: sim.runs[0].exit(1))
    answers = ask_restart(sim, 101, now=False)  # the backoff lasts 2 s
    sim.at(200, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert answers == [
        CommandResult(True, "vLLM is not running; the next start uses the current config")
    ]
    assert len(sim.runs) == 2 and sim.runs[1].started == at(102.5)


def test_a_restart_now_asked_during_the_backoff_cuts_it_short(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    sim.at(100, lambda: sim.runs[0].exit(1))
    answers = ask_restart(sim, 101, now=True)  # the backoff would last until 102.5
    sim.at(200, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert answers == [CommandResult(True, "starting vLLM now: the backoff is cut short")]
    assert len(sim.runs) == 2 and sim.runs[1].started == at(101)


def test_a_restart_asked_while_stopping_is_answered(tmp_path: Path) -> None:
    sim = windowed(tmp_path, DAILY)
    sim.at(60, sim.signal(signal.SIGTERM))
    answers = ask_restart(sim, 60.1, now=True)  # while vLLM is being stopped
    assert sim.play() == 0
    assert answers == [CommandResult(False, "the supervisor is stopping")]
    assert len(sim.runs) == 1


def test_the_status_file_says_whether_a_window_is_open_and_when_the_next_opens(
    tmp_path: Path,
) -> None:
    sim = windowed(tmp_path, DAILY)
    seen: list[Any] = []

    def read() -> None:
        sim.supervisor.reporter.write_status()
        written = json.loads((tmp_path / "state" / STATUS_FILE).read_text())
        seen.append(written["maintenance"])

    sim.at(30, read)
    sim.at(OPENS + 30, read)
    sim.at(OPENS + 60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    closed, open_now = seen
    assert closed == {
        "open_now": False,
        "next_opening": "2023-11-14T23:00:00+00:00",
        "next_opening_epoch": 1_700_002_800.0,
    }
    assert open_now["open_now"] is True


def test_without_windows_the_status_has_no_maintenance_entry(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert json.loads((tmp_path / "state" / STATUS_FILE).read_text())["maintenance"] is None
