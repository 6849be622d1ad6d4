"""Scripted histories of a headless host (no HTTP server here): READY once its log says the
engine is up and the head answers, READY=1 naming the role, and a head gone for
`failure_threshold` checks restarting this host's vLLM."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.topology import host_role
from niodoo_supervisor.supervise.headless_probe import HeadlessProber, RunView, head_target
from niodoo_supervisor.supervise.seams import Prober
from supervise_sim import FakeRun, Script, Sim, phase, sim_config


class ScriptedHead:
    """The head as this host sees it: reachable until told otherwise."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.asked = 0

    async def reach(self) -> str | None:
        self.asked += 1
        return self.problem


def headless_config(tmp: Path, **topology: object) -> Config:
    config = sim_config(tmp)
    section = config.topology.model_copy(
        update={"backend": "dp", "nodes": 2, "rank": 1, "head_address": "10.13.0.1", **topology}
    )
    return config.model_copy(update={"topology": section})


def headless_sim(tmp: Path, head: ScriptedHead, **topology: object) -> Sim:
    """A Sim whose supervisor plays rank 1 of 2 (dp): the headless prober over the simulated
    runs (alive until they exit) and the scripted head."""
    config = headless_config(tmp, **topology)
    sim = Sim(tmp, config=config)
    supervisor = sim.supervisor
    role = host_role(config, {})
    supervisor.next_start.plan = dataclasses.replace(supervisor.plan, role=role)

    def processes() -> int:
        return 0 if not sim.runs or sim.runs[-1].exit_code is not None else 2

    def factory(config: Config, api_key: str | None) -> Prober:
        view = RunView(processes, lambda: supervisor.vllm_events.progress.phases)
        target = head_target(config, role)
        return HeadlessProber(role, view, target, timeout=5.0, reach=head.reach)

    supervisor.prober_factory = factory
    supervisor.reloads.prober_factory = factory
    return sim


def engine_ready(seconds: float = 5.0) -> Script:
    """A headless engine's start: its init line after `seconds`, no HTTP server."""

    def script(run: FakeRun) -> None:
        line = "init engine (profile, create kv cache, warmup model) took 4.00 s"
        run.sim.after(1, lambda: run.say("loading"))
        run.sim.after(seconds, lambda: run.say(line, phase("engine_ready", line, seconds=4.0)))

    return script


def test_ready_only_after_the_engine_line_and_says_the_role(tmp_path: Path) -> None:
    head = ScriptedHead()
    sim = headless_sim(tmp_path, head)
    sim.scripts = [engine_ready(5.0)]
    sim.at(30, sim.signal(15))
    sim.play()
    ready = sim.transition("READY")
    assert ready["reason"].startswith("ready after 5.")
    (ready_fields,) = [n.fields for n in sim.notifier.sent if "READY=1" in n.fields]
    assert "STATUS=ready: headless rank 1 of 2 (dp), head 10.13.0.1 reachable" in ready_fields
    record = sim.event("ready")
    assert record is not None
    assert record["role"] == "headless rank 1 of 2 (dp), head 10.13.0.1 reachable"
    assert "address" not in record
    assert not sim.runs[0].serving  # nothing here answers HTTP: its lines stay trusted


def test_a_head_never_reachable_keeps_it_starting(tmp_path: Path) -> None:
    head = ScriptedHead()
    head.problem = "connection refused"
    sim = headless_sim(tmp_path, head)
    sim.scripts = [engine_ready(5.0)]
    sim.at(60, sim.signal(15))
    sim.play()
    assert "READY" not in sim.states()
    assert head.asked > 0


def test_the_head_gone_for_the_threshold_restarts_this_hosts_vllm(tmp_path: Path) -> None:
    head = ScriptedHead()
    sim = headless_sim(tmp_path, head)
    sim.scripts = [engine_ready(5.0), engine_ready(5.0)]

    def head_dies() -> None:
        head.problem = "connection refused"

    def head_back() -> None:
        head.problem = None

    sim.at(20, head_dies)
    sim.at(60, head_back)
    sim.at(120, sim.signal(15))
    sim.play()
    assert sim.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "BACKOFF"]
    backoff = sim.transition("BACKOFF")
    assert backoff["reason"] == (
        "3 failed checks in a row: head http://10.13.0.1:8000/health: connection refused"
    )
    assert sim.states().count("READY") == 2  # started again once the head answered
    events = [r["event"] for r in sim.logs if r["event"].startswith("head_")]
    assert events[:2] == ["head_reachable", "head_unreachable"]
    assert "head_reachable" in events[2:]


def test_a_dead_engine_is_unhealthy_even_with_the_head_up(tmp_path: Path) -> None:
    head = ScriptedHead()
    sim = headless_sim(tmp_path, head, watch_head=False)
    sim.scripts = [engine_ready(5.0)]
    sim.at(20, lambda: sim.runs[0].exit(1))
    sim.at(25, sim.signal(15))
    sim.play()
    assert head.asked == 0  # not watched
    assert sim.transition("BACKOFF")["reason"] == "vLLM exited with code 1"
