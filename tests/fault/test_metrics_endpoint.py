"""`supervisor.metrics.listen` on the real daemon: Prometheus scrapes the supervisor of the
fake vLLM over loopback TCP through a crash and a restart."""

from __future__ import annotations

import httpx

from fault_supervisor import Launcher, assert_nothing_left, stop
from harness import wait_for
from metrics_scrape import labelled, loopback_port, parse, value

PORTS = range(18560, 18580)  # this helper's fault-tier ports


def test_a_scrape_over_loopback_shows_a_crash_and_the_restart(supervise: Launcher) -> None:
    listen = f"127.0.0.1:{loopback_port(PORTS)}"
    run = supervise("load_seconds=0.2,crash_after=0.5", supervisor__metrics={"listen": listen})
    wait_for(lambda: run.states().count("READY") >= 2, 30, "a second READY after the crash")
    answer = httpx.get(f"http://{listen}/metrics", trust_env=False, timeout=5)
    assert answer.status_code == 200
    samples = parse(answer.text)
    assert value(samples, "niodoo_supervisor_restarts_total", reason="crash") == 1.0
    assert labelled(samples, "niodoo_supervisor_state", "state")["READY"] == 1.0
    assert value(samples, "niodoo_supervisor_vllm_up") == 1.0
    assert value(samples, "niodoo_supervisor_adapters_expected") == 2.0
    assert value(samples, "niodoo_supervisor_adapters_served") == 2.0
    assert value(samples, "niodoo_supervisor_check_latency_seconds_count") > 0
    assert stop(run) == 0
    assert_nothing_left(run)
