"""The supervisor's three HTTP endpoints (control API, readiness, metrics) share one runner
set-up: a stop waits at most SHUTDOWN_GRACE on a request, not aiohttp's default 60 s."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from control_fakes import FakeTarget
from metrics_scrape import loopback_port
from niodoo_supervisor.control.metrics_http import metrics_endpoint
from niodoo_supervisor.control.readiness_http import ReadinessServer
from niodoo_supervisor.control.runner import SHUTDOWN_GRACE
from niodoo_supervisor.control.server import ControlServer, ControlSettings

PORTS = range(18560, 18570)


async def test_every_endpoint_stops_within_the_same_short_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grace: list[float] = []

    class Recording(web.AppRunner):
        def __init__(self, app: web.Application, **kwargs: Any) -> None:
            grace.append(kwargs.get("shutdown_timeout", 60.0))
            super().__init__(app, **kwargs)

    monkeypatch.setattr(web, "AppRunner", Recording)
    readiness = ReadinessServer("127.0.0.1", loopback_port(PORTS), lambda: True)
    async with metrics_endpoint(f"127.0.0.1:{loopback_port(PORTS)}", CollectorRegistry()):
        pass
    with tempfile.TemporaryDirectory(prefix="niodoo-run-") as folder:
        settings = ControlSettings(
            Path(folder) / "c.sock", listen=f"127.0.0.1:{loopback_port(PORTS)}"
        )
        ControlServer(FakeTarget(), CollectorRegistry(), settings)
    await readiness.close()
    assert grace == [SHUTDOWN_GRACE] * 4
