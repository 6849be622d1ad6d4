"""The probe of a host without vLLM's HTTP server: its part (processes, the ready line) and
the head's reachability, per backend."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.topology import DEFAULT_MASTER_PORT, host_role
from niodoo_supervisor.supervise.headless_probe import (
    HeadlessProber,
    HeadTarget,
    RunView,
    head_target,
    ready_role,
    role_sentence,
    session_size,
)
from niodoo_supervisor.supervise.probes import HttpProber, prober_for
from niodoo_supervisor.supervise.watch_settings import WatchSettings
from role_configs import HEAD, config_of, rank_of


def headless(tmp: Path, backend: str = "dp", **topology: Any) -> Config:
    return rank_of(tmp, backend, 1, **topology)


class View:
    """A scripted run: processes alive and the phases its log reached."""

    def __init__(self, processes: int = 3, phases: tuple[str, ...] = ()) -> None:
        self.processes = processes
        self.phases = frozenset(phases)

    def view(self) -> RunView:
        return RunView(lambda: self.processes, lambda: self.phases)


class Head:
    """A scripted head: None answers, a string is why not."""

    def __init__(self, problem: str | None = None) -> None:
        self.problem = problem
        self.asked = 0

    async def reach(self) -> str | None:
        self.asked += 1
        return self.problem


def prober(config: Config, view: View, head: Head | None = None) -> HeadlessProber:
    role = host_role(config, {})
    return HeadlessProber(
        role,
        view.view(),
        head_target(config, role),
        timeout=1.0,
        reach=head.reach if head else None,
    )


# --- where the head is watched ------------------------------------------------------------


def test_dp_watches_the_heads_health_on_the_server_port(tmp_path: Path) -> None:
    config = headless(tmp_path, "dp")
    target = head_target(config, host_role(config, {}))
    assert target == HeadTarget("10.13.0.1", 8123, http=True)
    assert target.describe == "http://10.13.0.1:8123/health"


def test_mp_watches_the_master_port_vllms_default_when_absent(tmp_path: Path) -> None:
    config = headless(tmp_path, "mp")
    assert head_target(config, host_role(config, {})) == HeadTarget(
        "10.13.0.1", DEFAULT_MASTER_PORT, http=False
    )
    (tmp_path / "b").mkdir()
    config = headless(tmp_path / "b", "mp", master_port=29614)
    assert head_target(config, host_role(config, {})) == HeadTarget("10.13.0.1", 29614, False)


def test_a_ray_worker_watches_the_ray_port(tmp_path: Path) -> None:
    config = headless(tmp_path, "ray", ray_port=6380)
    assert head_target(config, host_role(config, {})) == HeadTarget("10.13.0.1", 6380, False)


def test_nothing_is_watched_without_watch_head_on_the_head_or_on_one_host(
    tmp_path: Path,
) -> None:
    for name, config in {
        "unwatched": headless(tmp_path, "dp", watch_head=False),
        "head": config_of(tmp_path, backend="dp", nodes=2, rank=0, head_address="10.13.0.1"),
        "single": config_of(tmp_path),
    }.items():
        assert head_target(config, host_role(config, {})) is None, name


def test_an_ipv6_head_is_bracketed(tmp_path: Path) -> None:
    assert HeadTarget("fd00::1", 8123, http=True).describe == "http://[fd00::1]:8123/health"


# --- what READY=1 and the ready record say ----------------------------------------------------


def test_ready_text_names_the_role_and_the_head_instead_of_an_address(tmp_path: Path) -> None:
    config = headless(tmp_path, "dp")
    role = host_role(config, {})
    assert role_sentence(config, role) == "headless rank 1 of 2 (dp), head 10.13.0.1 reachable"
    settings = WatchSettings.from_config(config, role)
    assert settings.ready_text == "ready: headless rank 1 of 2 (dp), head 10.13.0.1 reachable"
    assert ready_role(config, role) == role_sentence(config, role)


def test_an_unwatched_head_is_said_so(tmp_path: Path) -> None:
    config = headless(tmp_path, "mp", watch_head=False)
    assert role_sentence(config, host_role(config, {})) == (
        "headless rank 1 of 2 (mp), head not watched"
    )


def test_a_single_host_keeps_its_serving_text(tmp_path: Path) -> None:
    settings = WatchSettings.from_config(config_of(tmp_path))
    assert ready_role(config_of(tmp_path), host_role(config_of(tmp_path), {})) is None
    assert settings.ready_text == "ready: serving tiny with no adapters on 127.0.0.1:8123"


# --- prober_for picks by role -------------------------------------------------------------------


def test_prober_for_picks_the_headless_prober_only_without_an_api_server(tmp_path: Path) -> None:
    view = View().view()
    config = headless(tmp_path, "dp")
    assert isinstance(
        prober_for(config, None, role=host_role(config, {}), run=view), HeadlessProber
    )
    head = config_of(tmp_path, backend="dp", nodes=2, rank=0, head_address="10.13.0.1")
    assert isinstance(prober_for(head, None, role=host_role(head, {}), run=view), HttpProber)
    assert isinstance(prober_for(config_of(tmp_path), None), HttpProber)


# --- the decisions ----------------------------------------------------------------------------


def test_not_ready_before_the_ready_line_and_the_head_is_not_asked(tmp_path: Path) -> None:
    head = Head()
    result = asyncio.run(prober(headless(tmp_path, "dp"), View(3, ("engine_init",)), head).check())
    assert not result.ok
    assert result.reason == "vLLM's log has not reached engine_ready yet (3 processes)"
    assert result.health.status is None  # nothing here answers HTTP: never "serving"
    assert head.asked == 0


def test_ready_after_the_ready_line_with_the_head_reachable(tmp_path: Path) -> None:
    for backend, phase in (("dp", "engine_ready"), ("mp", "weights_loaded")):
        config = headless(tmp_path, backend)
        result = asyncio.run(prober(config, View(2, (phase,)), Head()).check())
        assert result.ok, backend
        assert result.reason == "ok"


def test_mp_is_not_ready_on_an_engine_line_it_never_logs(tmp_path: Path) -> None:
    result = asyncio.run(prober(headless(tmp_path, "mp"), View(2, ("engine_ready",))).check())
    assert not result.ok
    assert "weights_loaded" in result.reason


def test_no_process_left_is_a_failed_check(tmp_path: Path) -> None:
    result = asyncio.run(prober(headless(tmp_path), View(0, ("engine_ready",)), Head()).check())
    assert not result.ok
    assert result.reason == "vLLM has no process left"


def test_an_unreachable_head_fails_the_check_and_names_the_head(tmp_path: Path) -> None:
    config = headless(tmp_path, "mp")
    result = asyncio.run(
        prober(config, View(2, ("weights_loaded",)), Head("connection refused")).check()
    )
    assert not result.ok
    assert result.reason == "head 10.13.0.1:29501: connection refused"


def test_an_unwatched_head_is_never_asked(tmp_path: Path) -> None:
    head = Head("connection refused")
    config = headless(tmp_path, "dp", watch_head=False)
    assert asyncio.run(prober(config, View(2, ("engine_ready",)), head).check()).ok
    assert head.asked == 0


def test_head_changes_are_logged_once_each_way(tmp_path: Path) -> None:
    head = Head()
    probe = prober(headless(tmp_path, "mp"), View(2, ("weights_loaded",)), head)

    async def checks() -> None:
        for problem in (None, None, "connection refused", "timed out", None, None):
            head.problem = problem
            await probe.check()

    with capture_logs() as logs:
        asyncio.run(checks())
    changes = [(r["event"], r.get("reason")) for r in logs if r["event"].startswith("head_")]
    assert changes == [
        ("head_reachable", None),
        ("head_unreachable", "connection refused"),
        ("head_reachable", None),
    ]


def test_a_head_timing_out_is_a_timed_out_check(tmp_path: Path) -> None:
    probe = prober(headless(tmp_path, "mp"), View(2, ("weights_loaded",)), Head("timed out"))
    assert asyncio.run(probe.check()).timed_out


# --- the real reach: TCP and HTTP -------------------------------------------------------------


def test_tcp_reach_follows_a_real_listener(tmp_path: Path) -> None:
    port = 0

    async def scenario() -> list[str]:
        nonlocal port
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = headless(tmp_path, "mp", master_port=port, head_address="127.0.0.1")
        role = host_role(config, {})
        probe = HeadlessProber(
            role, View(2, ("weights_loaded",)).view(), head_target(config, role), timeout=1.0
        )
        reasons = [(await probe.check()).reason]
        server.close()
        await server.wait_closed()
        reasons.append((await probe.check()).reason)
        await probe.aclose()
        return reasons

    reasons = asyncio.run(scenario())
    assert reasons == ["ok", f"head 127.0.0.1:{port}: connection refused"]


class Python310Timeout(Exception):
    """asyncio.TimeoutError before Python 3.11: not the builtin TimeoutError (nor OSError)."""


def test_a_head_port_timing_out_is_a_timed_out_check_on_python_310_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def wait_for(awaitable: Any, timeout: float) -> None:
        awaitable.close()  # never awaited: the connection "times out" at once
        raise Python310Timeout

    monkeypatch.setattr(asyncio, "TimeoutError", Python310Timeout)
    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    config = headless(tmp_path, "mp", master_port=DEFAULT_MASTER_PORT)
    role = host_role(config, {})
    probe = HeadlessProber(
        role, View(2, ("weights_loaded",)).view(), head_target(config, role), timeout=1.0
    )
    result = asyncio.run(probe.check())
    assert result.timed_out
    assert result.reason == f"head {HEAD}:{DEFAULT_MASTER_PORT}: timed out"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(200, "ok"), (503, "head http://10.13.0.1:8123/health: /health answered HTTP 503")],
)
def test_dp_reach_asks_the_heads_health(tmp_path: Path, status: int, reason: str) -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(status)

    config = headless(tmp_path, "dp")
    role = host_role(config, {})

    async def check() -> str:
        probe = HeadlessProber(
            role,
            View(2, ("engine_ready",)).view(),
            head_target(config, role),
            timeout=1.0,
            transport=httpx.MockTransport(answer),
        )
        try:
            return (await probe.check()).reason
        finally:
            await probe.aclose()

    assert asyncio.run(check()) == reason
    assert asked == ["http://10.13.0.1:8123/health"]


def test_session_size_counts_the_live_session(tmp_path: Path) -> None:
    assert session_size(None) == 0
    assert session_size(os.getsid(0)) >= 1  # this test's own session
