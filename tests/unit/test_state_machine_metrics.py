"""The supervisor's Prometheus registry through scripted histories in virtual time (the
settings of `supervise_sim.SETTINGS`): what a scrape shows during and after them."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from metrics_scrape import Samples, scrape, value
from niodoo_supervisor.supervise.incidents import ReloadResult
from supervise_sim import START, FakeRun, Sim, boots, run_virtual, sim_config, sim_plan

RESTARTS = "niodoo_supervisor_restarts_total"


def scrape_after(registry: CollectorRegistry) -> Samples:
    """A scrape once the history has ended (the supervisor's clock reads a running loop)."""

    async def scraped() -> Samples:
        return scrape(registry)

    return run_virtual(scraped())


def test_a_crash_shows_in_the_registry(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0, then=lambda run: run.sim.after(20, lambda: run.exit(1))), boots(5.0)])  # fmt: skip
    registry = sim.supervisor.metrics_registry
    seen: list[Samples] = []
    sim.at(15, lambda: seen.append(scrape(registry)))  # ready, before the crash
    sim.at(60, lambda: seen.append(scrape(registry)))  # ready again after it
    sim.at(100, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    before, after = seen
    assert value(before, "niodoo_supervisor_state", state="READY") == 1.0
    assert value(before, "niodoo_supervisor_vllm_up") == 1.0
    assert value(before, RESTARTS, reason="crash") == 0.0
    assert value(after, RESTARTS, reason="crash") == 1.0
    assert value(after, "niodoo_supervisor_adapters_expected") == 2.0
    assert value(after, "niodoo_supervisor_adapters_served") == 2.0
    checks = value(after, "niodoo_supervisor_check_latency_seconds_count")
    assert checks == len([at for at in sim.probes if at < START + 60])
    # Each probe of the scripted prober takes 5 ms: a refused check asks /health alone, a
    # passing one asks /v1/models too.
    refused = value(after, "niodoo_supervisor_check_failures_total", probe="health")
    assert refused > 0
    assert value(after, "niodoo_supervisor_check_latency_seconds_bucket", le="0.005") == refused
    assert value(after, "niodoo_supervisor_check_latency_seconds_bucket", le="0.01") == checks
    assert value(after, "niodoo_supervisor_log_events_total", rule="listening", severity="info") == 2.0  # fmt: skip
    end = scrape_after(registry)
    assert value(end, "niodoo_supervisor_state", state="STOPPED") == 1.0
    assert value(end, "niodoo_supervisor_vllm_up") == 0.0
    assert value(end, RESTARTS, reason="crash") == 1.0  # a requested stop is no restart


def test_failed_checks_and_a_reload_restart_by_their_reasons(tmp_path: Path) -> None:
    def goes_unhealthy(run: FakeRun) -> None:
        run.sim.after(12, lambda: setattr(run.sim.server, "health", 503))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=goes_unhealthy), boots(5.0), boots(5.0)])
    new = sim_config(tmp_path, port=8001)  # a new port needs a restart
    sim.reload_result = ReloadResult(new, replace(sim_plan("python3", "--port", "8001")))
    sim.at(150, sim.signal(signal.SIGHUP))
    sim.at(200, sim.signal(signal.SIGTERM))
    sim.play()
    assert len(sim.runs) == 3
    end = scrape_after(sim.supervisor.metrics_registry)
    assert value(end, RESTARTS, reason="unhealthy") == 1.0
    assert value(end, RESTARTS, reason="reload") == 1.0
    assert value(end, RESTARTS, reason="crash") == 0.0
