"""What the supervisor's three HTTP endpoints (the control API, `drain.readiness_listen`,
`supervisor.metrics.listen`) share: an aiohttp runner fit for the supervisor's own event loop,
and the one /metrics handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["SHUTDOWN_GRACE", "app_runner", "metrics_handler"]

# At exit, requests still waiting get this long (a command is answered "not carried out" as
# the loop closes); then they are cut: a stop must not wait on a client (aiohttp's default
# is 60 s).
SHUTDOWN_GRACE = 5.0


def app_runner(app: web.Application) -> web.AppRunner:
    # The supervisor's loop owns the signals; no access log (a scraper polls every few s).
    return web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE
    )


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /metrics: `registry` in Prometheus's text format."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics
