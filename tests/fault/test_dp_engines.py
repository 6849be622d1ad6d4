"""The head of a `dp` topology asks each data-parallel engine: one that stops answering (a
headless host's engine died; the head's /health stays 200) makes the head restart, so the
relaunched engine can join it. The fake vLLM hangs one rank's completions
(`rank_hang_after`), slows them (`rank_slow_after`), counts each engine's finished requests in
its /metrics (one `vllm:request_success_total` series per engine, as vLLM's data parallel) and
answers a rank past `--data-parallel-size` with vLLM's 400."""

from __future__ import annotations

import time
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fault_supervisor import Launcher, assert_nothing_left, free_port, stop
from harness import SupervisorRun, wait_for

DP_HEAD = {"backend": "dp", "nodes": 2, "rank": 0, "head_address": "127.0.0.1"}


def dp_head(supervise: Launcher, faults: str, lora: Any = None, **topology: Any) -> SupervisorRun:
    """A supervisor playing the head (rank 0) of a `dp` topology of 2 engines on 2 nodes
    (the checks' 1 s health timeout for the engines too, unless `topology` says)."""
    more = {} if lora is None else {"lora": lora}
    return supervise(
        faults,
        **more,
        server__launcher="serve",
        engine__data_parallel_size=2,
        topology={
            **DP_HEAD,
            "data_parallel_rpc_port": free_port(),
            "engine_timeout": 1,
            **topology,
        },
    )


def answered(run: SupervisorRun) -> dict[str, float]:
    """Each engine's finished requests, from the fake vLLM's /metrics."""
    port = yaml.safe_load(run.config.read_text())["server"]["port"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:request_success":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    engine = sample.labels["engine"]
                    counts[engine] = counts.get(engine, 0.0) + sample.value
    return counts


def test_a_dp_engine_that_stops_answering_restarts_the_head(supervise: Launcher) -> None:
    run = dp_head(supervise, "load_seconds=0.2,rank_hang_after=1.5,hang_rank=1")
    run.wait_state("READY", 60)
    wait_for(lambda: run.event("state_changed", new="BACKOFF"), 30, "BACKOFF after rank 1 hangs")
    assert run.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "BACKOFF"]
    unhealthy = run.event("state_changed", new="UNHEALTHY")
    assert unhealthy is not None and "rank 1" in unhealthy["reason"]
    backoff = run.event("state_changed", new="BACKOFF")
    assert backoff is not None
    assert "2 failed checks in a row" in backoff["reason"]
    assert "engine 1 (rank 1, node 1) did not answer in 1 s" in backoff["reason"]
    assert "rank 0" not in backoff["reason"]  # the engine that answers is not blamed
    run.wait_state("STARTING", 30)  # restarted: the relaunched engine can join now
    assert stop(run) == 0
    assert_nothing_left(run)


def test_a_dp_head_whose_engines_answer_stays_ready(supervise: Launcher) -> None:
    run = dp_head(supervise, "load_seconds=0.2")
    run.wait_state("READY", 60)
    before = answered(run)
    wait_for(lambda: min(answered(run).values()) >= 5, 30, "five checks asking both engines")
    after = answered(run)
    assert after["0"] > before.get("0", 0) and after["1"] > before.get("1", 0)  # the probe ran
    assert run.status()["last_check"]["ok"] is True
    assert run.states() == ["STARTING", "READY"]
    assert stop(run) == 0
    assert_nothing_left(run)


def test_a_slow_but_alive_engine_does_not_restart_the_head(supervise: Launcher) -> None:
    # Rank 1 answers 2 s late: past supervisor.health.timeout (1 s), within engine_timeout.
    slow = "load_seconds=0.2,rank_slow_after=0,slow_rank_seconds=2"
    run = dp_head(supervise, slow, engine_timeout=5)
    run.wait_state("READY", 60)
    wait_for(lambda: answered(run).get("1", 0) >= 3, 40, "rank 1 answered three slow checks")
    assert run.status()["last_check"]["ok"] is True
    assert run.states() == ["STARTING", "READY"]
    assert stop(run) == 0
    assert_nothing_left(run)


def test_a_4xx_from_an_engine_turns_the_engine_checks_off_and_the_head_serves_on(
    supervise: Launcher,
) -> None:
    # A pooling model's server has no /v1/completions: 404, which is no engine's death (and
    # no adapters: their effect probe needs completions too).
    run = dp_head(supervise, "load_seconds=0.2,no_completions", lora={"enabled": False})
    run.wait_state("READY", 60)
    wait_for(lambda: run.event("engine_checks_off"), 30, "engine_checks_off")
    off = run.event("engine_checks_off")
    assert off is not None and "answered HTTP 404" in off["reason"]
    since = time.time()
    wait_for(lambda: float(run.status()["last_check"]["at"]) > since + 2, 30, "checks after 2 s")
    assert run.status()["last_check"]["ok"] is True
    assert run.states() == ["STARTING", "READY"]
    assert len([event for event in run.events() if event["event"] == "engine_checks_off"]) == 1
    assert stop(run) == 0
    assert_nothing_left(run)
