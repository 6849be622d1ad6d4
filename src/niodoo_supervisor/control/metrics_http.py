"""GET /metrics on a loopback TCP port (`supervisor.metrics.listen`), for a Prometheus that
cannot reach the control socket: an aiohttp server in the supervisor's own event loop that
serves nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from niodoo_supervisor.config.metrics_sections import parse_listen
from niodoo_supervisor.control.runner import app_runner, metrics_handler

__all__ = ["metrics_endpoint"]

log = structlog.get_logger("niodoo_supervisor")


@contextlib.asynccontextmanager
async def metrics_endpoint(
    listen: str | None, registry: CollectorRegistry
) -> AsyncIterator[str | None]:
    """Serve `registry` at http://`listen`/metrics while inside; yields the address served,
    None when `listen` is None or cannot be bound (said in a warning: metrics are not worth
    stopping vLLM's supervision for)."""
    if listen is None:
        yield None
        return

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    runner = app_runner(app)
    await runner.setup()
    host, port = parse_listen(listen)
    served: str | None = listen
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("metrics_listening", url=f"http://{listen}/metrics")
    except OSError as exc:
        served = None
        log.warning(
            "metrics_not_served",
            key="supervisor.metrics.listen",
            address=listen,
            reason=exc.strerror or str(exc),
            hint="choose a free loopback port; supervision goes on without the TCP endpoint",
        )
    try:
        yield served
    finally:
        await runner.cleanup()
