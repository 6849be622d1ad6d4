"""The head of a `dp` topology asks each data-parallel engine: one that stops answering (a
headless host's engine died; the head's /health stays 200) makes the head restart, so the
relaunched engine can join it. The fake vLLM hangs one rank's completions
(`rank_hang_after`)."""

from __future__ import annotations

import time

from fault_supervisor import Launcher, assert_nothing_left, free_port, stop
from harness import SupervisorRun, wait_for

DP_HEAD = {"backend": "dp", "nodes": 2, "rank": 0, "head_address": "127.0.0.1"}


def dp_head(supervise: Launcher, faults: str) -> SupervisorRun:
    """A supervisor playing the head (rank 0) of a `dp` topology of 2 engines on 2 nodes."""
    return supervise(
        faults,
        server__launcher="serve",
        engine__data_parallel_size=2,
        topology={**DP_HEAD, "data_parallel_rpc_port": free_port()},
    )


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
    run = dp_head(supervise, "load_seconds=0.2,rank_hang_after=0.5,hang_rank=5")  # no engine 5
    run.wait_state("READY", 60)
    since = time.time() + 3  # the switch has fired; about ten checks (0.3 s apart) follow
    wait_for(lambda: float(run.status()["last_check"]["at"]) > since, 30, "checks after 3 s")
    assert run.status()["last_check"]["ok"] is True
    assert run.states() == ["STARTING", "READY"]
    assert stop(run) == 0
    assert_nothing_left(run)
