"""Per-host roles with the real supervisor: a headless rank (the fake vLLM rendered with
`--headless`, no HTTP server) watched through its processes, its log and a stand-in for the
head's port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fault_supervisor import assert_nothing_left, make_config, status_command, stop
from harness import (
    SupervisorRun,
    launched_pids,
    notify_socket,
    start_supervisor,
    stop_supervisor,
    wait_for,
)
from head_port import HeadPort, head_port
from role_configs import topology_overrides


@pytest.fixture
def headless_rank(tmp_path: Path) -> Iterator[tuple[HeadPort, SupervisorRun]]:
    """A supervisor playing rank 1 of 2 (mp) of a head whose master port is a `HeadPort`."""
    with head_port() as head, notify_socket(tmp_path) as notify:
        topology = {
            "backend": "mp",
            "nodes": 2,
            "rank": 1,
            "head_address": "127.0.0.1",
            "master_port": head.port,
        }
        config = make_config(tmp_path, "load_seconds=0.3", **topology_overrides(topology))
        run = start_supervisor(config, tmp_path / "state", notify, tmp_path)
        try:
            yield head, run
        finally:
            stop_supervisor(run)


def test_headless_rank_is_ready_without_http_and_says_its_role(
    headless_rank: tuple[HeadPort, SupervisorRun],
) -> None:
    head, run = headless_rank
    run.wait_state("READY", 30)
    ready = wait_for(lambda: run.event("ready"), 10, "the ready record (just after READY)")
    assert ready is not None
    assert ready["role"] == "headless rank 1 of 2 (mp), head 127.0.0.1 reachable"
    assert "address" not in ready
    notified = run.notify.first("READY", "1")
    assert notified is not None
    assert notified.fields["STATUS"] == "ready: headless rank 1 of 2 (mp), head 127.0.0.1 reachable"
    assert run.event("head_reachable", head=f"127.0.0.1:{head.port}") is not None
    role = run.status()["role"]
    assert (role["role"], role["rank"], role["api_server"]) == ("headless", 1, False)
    assert role["sees"][-1] == f"head 127.0.0.1:{head.port} reachability"
    shown = status_command(run).stdout
    assert "\nrole:      headless rank 1 of 2 (mp), no API server here; cannot see: " in shown
    labels = 'backend="mp",rank="1",role="headless"'
    assert run.metrics()[f"niodoo_host_role_info{{{labels}}}"] == 1.0
    assert stop(run) == 0
    assert_nothing_left(run)


def test_head_gone_makes_it_unhealthy_then_restarts_this_hosts_vllm(
    headless_rank: tuple[HeadPort, SupervisorRun],
) -> None:
    head, run = headless_rank
    run.wait_state("READY", 30)
    head.close()
    run.wait_state("BACKOFF", 30)
    gone = run.event("head_unreachable")
    assert gone is not None
    assert gone["reason"] == "connection refused"
    backoff = run.event("state_changed", new="BACKOFF")
    assert backoff is not None
    assert backoff["reason"] == (
        f"2 failed checks in a row: head 127.0.0.1:{head.port}: connection refused"
    )
    # Started again, and not ready while the head stays away.
    wait_for(lambda: len(launched_pids(run)) >= 2, 30, "vLLM started again")
    assert run.states().count("READY") == 1
    assert stop(run) == 0
    assert_nothing_left(run)
