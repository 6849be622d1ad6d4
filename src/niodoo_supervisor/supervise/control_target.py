"""The supervisor as the control API sees it (`control.api.ControlTarget`): its status board
read as it is now, and every command posted to the dispatcher as an incident with a reply the
loop answers (a reload once taken or refused, a restart, an adapter change)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.control.server import ControlServer, ControlServerError, ControlSettings
from niodoo_supervisor.supervise.drain import ready_for_traffic
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    Incident,
    ReloadAsked,
    Reply,
    RestartAsked,
)
from niodoo_supervisor.supervise.loop import Supervisor
from niodoo_supervisor.supervise.states import State

__all__ = ["SupervisorControl", "supervise_with_control"]

log = structlog.get_logger("niodoo_supervisor")


class SupervisorControl:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def status(self) -> dict[str, Any]:
        return {**self.supervisor.reporter.status.to_dict(), "source": "daemon"}

    def readiness(self) -> tuple[bool, str]:
        status = self.supervisor.reporter.status
        state = self.supervisor.state
        if ready_for_traffic(state, status):
            return True, f"ready: serving {status.served_model}"
        if state is not State.READY:
            return False, f"{state.value}: {status.reason}" if status.reason else state.value
        return False, "draining before a planned restart"

    async def reload(self) -> CommandResult:
        return await self._ask(ReloadAsked)

    async def restart(self, *, now: bool) -> CommandResult:
        return await self._ask(lambda reply: RestartAsked(now, reply))

    async def adapters(self) -> CommandResult:
        status = self.supervisor.reporter.status
        names = list(status.adapters)
        live_only = [name for name in names if name in status.adapters_live_only]
        shown = [
            f"{name} (live only, not in the YAML)" if name in live_only else name for name in names
        ]
        return CommandResult(
            True,
            f"{status.served_model or '(no model)'} + adapters {', '.join(shown) or '(none)'}",
            {"served_model": status.served_model, "adapters": names, "live_only": live_only},
        )

    async def load_adapter(self, name: str, path: str) -> CommandResult:
        return await self._ask(lambda reply: AdapterLoadAsked(name, path, reply))

    async def unload_adapter(self, name: str) -> CommandResult:
        return await self._ask(lambda reply: AdapterUnloadAsked(name, reply))

    async def _ask(self, incident: Callable[[Reply], Incident]) -> CommandResult:
        reply: Reply = asyncio.get_running_loop().create_future()
        self.supervisor.dispatcher.post(incident(reply))
        # Shielded: a caller that hangs up must not cancel the reply the loop will answer.
        return await asyncio.shield(reply)


async def supervise_with_control(
    supervisor: Supervisor,
    settings: ControlSettings,
    early_signals: Callable[[], Iterable[int]] | None = None,
) -> int:
    """`supervisor.run` with the control API listening from before vLLM's first launch until
    the supervisor exits (the socket file goes with it). A socket that cannot be made is a
    config problem: the supervisor does not start."""
    server = ControlServer(SupervisorControl(supervisor), supervisor.metrics_registry, settings)
    try:
        await server.start()
    except ControlServerError as exc:
        log.error("control_refused", problem=str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    try:
        return await supervisor.run(early_signals)
    finally:
        await server.close()
