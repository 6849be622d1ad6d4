"""A plain HTTP readiness endpoint for a load balancer (`drain.readiness_listen`).

`GET /ready` answers 200 while vLLM is ready and no drain has begun, 503 otherwise; nothing
else is served (404, or 405 for another method). It runs on aiohttp in the supervisor's own
event loop and reads the answer from a callable, so it never blocks the loop or holds state.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from niodoo_supervisor.config.drain_sections import split_listen
from niodoo_supervisor.control.runner import app_runner
from niodoo_supervisor.files.atomic import describe_os_error

__all__ = ["ReadinessServer"]


class ReadinessServer:
    def __init__(self, host: str, port: int, is_ready: Callable[[], bool]) -> None:
        self.host = host
        self.port = port
        self.is_ready = is_ready
        app = web.Application()
        app.router.add_get("/ready", self._ready)
        self._runner = app_runner(app)

    @classmethod
    def listening_on(
        cls, listen: str | None, is_ready: Callable[[], bool]
    ) -> ReadinessServer | None:
        """The server for `drain.readiness_listen` (validated HOST:PORT); None when unset."""
        if listen is None:
            return None
        host, port = split_listen(listen)
        return cls(host, port, is_ready)

    async def start(self) -> str | None:
        """Listen; the one-line reason (naming the key) when the address cannot be bound."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            where = f"{self.host}:{self.port}"
            return f"drain.readiness_listen: cannot listen on {where}: {describe_os_error(exc)}; choose a free address"
        return None

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _ready(self, _request: web.Request) -> web.Response:
        if self.is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")
