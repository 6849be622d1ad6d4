"""A command that comes when nobody will carry it out any more (a stop is asked, or the
dispatcher is closed) is answered at once, so the CLI neither hangs nor waits out the stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from niodoo_supervisor.control.api import STOPPING, CommandResult
from niodoo_supervisor.supervise.dispatch import Dispatcher
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    Incident,
    ReloadAsked,
    Reply,
    RestartAsked,
    StopAsked,
)
from niodoo_supervisor.supervise.seams import SystemClock

_COMMANDS: list[Callable[[Reply], Incident]] = [
    ReloadAsked,
    lambda reply: RestartAsked(True, reply),
    lambda reply: AdapterLoadAsked("b", "/srv/b", reply),
    lambda reply: AdapterUnloadAsked("b", reply),
]


def _reply() -> Reply:
    return asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("command", _COMMANDS)
async def test_a_command_after_close_is_refused_at_once(
    command: Callable[[Reply], Incident],
) -> None:
    dispatcher = Dispatcher(SystemClock(), None)
    await dispatcher.close()
    reply = _reply()
    dispatcher.post(command(reply))
    assert reply.done() and reply.result() == CommandResult(False, STOPPING)


@pytest.mark.parametrize("command", _COMMANDS)
async def test_a_command_after_a_stop_is_refused_at_once(
    command: Callable[[Reply], Incident],
) -> None:
    dispatcher = Dispatcher(SystemClock(), None)
    queued = _reply()
    dispatcher.post(RestartAsked(False, queued))  # asked before the stop: it stays queued
    dispatcher.post(StopAsked("SIGTERM received"))
    late = _reply()
    dispatcher.post(command(late))
    assert late.done() and late.result() == CommandResult(False, STOPPING)
    assert not queued.done()
    first: Incident | None = await dispatcher.next(0)
    assert isinstance(first, RestartAsked) and first.reply is queued
    await dispatcher.close()


async def test_a_sighup_after_a_stop_is_still_queued() -> None:
    dispatcher = Dispatcher(SystemClock(), None)
    dispatcher.post(StopAsked("SIGTERM received"))
    dispatcher.post(ReloadAsked())
    assert isinstance(await dispatcher.next(0), StopAsked)
    await dispatcher.close()
