"""A planned restart under load, against the real vLLM (CPU build): drained, and the way it
was before drains (vLLM's default --shutdown-timeout 0), figures printed side by side.

One supervisor, three starts: it starts with no drain, a reload that sets `drain.timeout: 20`
restarts it at once (the running vLLM was launched without a drain: today's immediate
restart), and a second reload (`drain.timeout: 21`, `drain.announce: 1`: a restart-needing
change) restarts it drained. A steady load (`loadgen.Load`) runs through each restart.

"Accepted before the drain began": sent before status.json's `drain.since` (the moment the
supervisor said not-ready, before vLLM's SIGTERM) and answered HTTP 200. "Refused at once":
a refusal (no HTTP 200) comes back within `REFUSED_WITHIN` s of sending, less than one
request's work, so a client is never left waiting on a server that will not serve it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import NotifySocket, SupervisorRun, start_supervisor, stop_supervisor, wait_for
from loadgen import Load, Outcome, Request, summary_table, tally
from niodoo_supervisor.demo.model import DemoModel
from realvllm import port_of, record_figure, write_demo_config

pytestmark = pytest.mark.e2e

START_TIMEOUT = 300  # a cold CPU start of vLLM; slower on a loaded machine
WARM_UP = 4.0  # seconds of load before the restart
MIN_ACCEPTED = 4  # a restart that saw fewer accepted requests was not under load
REFUSED_WITHIN = 2.0


class DrainWatcher:
    """Polls status.json for the drain: when it began and the request counts it showed."""

    def __init__(self, run: SupervisorRun) -> None:
        self.run = run
        self.since: float | None = None
        self.shown: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            drain = self.run.status().get("drain")
            if drain:
                self.since = self.since or float(drain["since"])
                if not self.shown or self.shown[-1] != drain:
                    self.shown.append(drain)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Restart:
    requests: list[Request]
    drain_since: float
    shown: list[dict[str, Any]]

    def accepted_before_drain(self) -> list[Request]:
        return [r for r in self.requests if r.sent < self.drain_since and r.accepted is not None]

    def figures(self) -> dict[str, object]:
        counts = tally(self.requests)
        before = self.accepted_before_drain()
        refused = [r for r in self.requests if r.outcome == Outcome.REFUSED]
        figures: dict[str, object] = {
            "requests sent": len(self.requests),
            "accepted (HTTP 200)": sum(r.accepted is not None for r in self.requests),
            "completed": counts[Outcome.COMPLETED],
            "refused": counts[Outcome.REFUSED],
            "failed mid-flight": counts[Outcome.FAILED],
            "accepted before the drain": len(before),
            "  of them failed mid-flight": sum(r.outcome == Outcome.FAILED for r in before),
            "slowest refusal (s)": f"{max((r.took for r in refused), default=0):.2f}",
            "most running shown": max(
                (d["running"] or 0 for d in self.shown if d["phase"] == "draining"), default="-"
            ),
        }
        details = sorted(key for key in counts if key.startswith("  "))
        figures.update({key: counts[key] for key in details})
        return figures


@pytest.fixture
def supervised(e2e_tmp: Path, vllm_python: str, demo_model: DemoModel) -> Iterator[SupervisorRun]:
    tmp = e2e_tmp / "drain-load"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        yield run
    finally:
        stop_supervisor(run)
        notify.close()


def _set_drain(run: SupervisorRun, drain: dict[str, object]) -> None:
    data = yaml.safe_load(run.config.read_text())
    data["drain"] = drain
    run.config.write_text(yaml.safe_dump(data))


def _ready_count(run: SupervisorRun) -> int:
    return run.states().count("READY")


def _restart_under_load(run: SupervisorRun, drain: dict[str, object]) -> Restart:
    readies = _ready_count(run)
    load = Load(f"http://127.0.0.1:{port_of(run.config)}")
    watcher = DrainWatcher(run)
    load.start()
    try:
        time.sleep(WARM_UP)  # a steady stream before the restart, on purpose
        _set_drain(run, drain)
        run.signal(signal.SIGHUP)
        wait_for(lambda: _ready_count(run) > readies, START_TIMEOUT, "READY after the restart")
        # A few requests served by the new vLLM.
        after = time.time()
        wait_for(
            lambda: (
                sum(r.sent > after and r.outcome == Outcome.COMPLETED for r in load.done()) >= 2
            ),
            60,
            "requests completed by the new vLLM",
        )
    finally:
        load.stop()
        watcher.stop()
    assert watcher.since is not None, "status.json never showed the drain"
    return Restart(load.done(), watcher.since, watcher.shown)


def test_a_drained_restart_under_load_fails_no_accepted_request(
    supervised: SupervisorRun,
) -> None:
    run = supervised
    run.wait_state("READY", START_TIMEOUT)
    immediate = _restart_under_load(run, {"timeout": 20})
    drained = _restart_under_load(run, {"timeout": 21, "announce": 1})

    table = summary_table(
        {"immediate": immediate.figures(), "drained (20 s, announce 1 s)": drained.figures()}
    )
    print("\n" + table)
    for line in table.splitlines():
        record_figure(f"planned restart under load | {line}")

    assert len(immediate.accepted_before_drain()) >= MIN_ACCEPTED  # it really was under load
    before = drained.accepted_before_drain()
    assert len(before) >= MIN_ACCEPTED
    assert [r.detail for r in before if r.outcome != Outcome.COMPLETED] == []
    refused = [r for r in drained.requests if r.outcome == Outcome.REFUSED]
    assert [(r.detail, round(r.took, 2)) for r in refused if r.took > REFUSED_WITHIN] == []
    # The status showed the drain going down to nothing running.
    counts = [d["running"] for d in drained.shown if d["phase"] == "draining"]
    assert counts and counts[-1] == 0, drained.shown
    drain_events = [e for e in run.events() if e.get("event") == "drain_finished"]
    assert len(drain_events) == 2
    # The metrics count both planned restarts as reloads, none as a crash, and no drain is left.
    metrics = run.metrics()
    assert metrics['niodoo_supervisor_restarts_total{reason="reload"}'] == 2
    assert metrics['niodoo_supervisor_restarts_total{reason="crash"}'] == 0
    assert metrics["niodoo_supervisor_drain_in_progress"] == 0
