"""The one queue everything that happens goes through, with one set of rules for it wherever
the loop waits (before a start, in a backoff, while watching a run):

- a stop (SIGTERM/SIGINT) is recorded for good: `stop_asked` stays set, so whoever looks next
  acts on it, and a probe in flight is cut short;
- a reload (SIGHUP, or the control API's `ReloadAsked(reply)`) runs as a task that posts its
  result (`ReloadDone`): probes, watchdog pings and a stop go on while a preflight takes
  minutes; a SIGHUP during a reload reads the config once more when that reload ends. The
  control API's callers ride on the result of the reload that reads the file after they asked
  (`ReloadResult.replies`); whoever takes that result answers them;
- everything else (a child's exit, a log event, a reload's result) goes to the waiting caller,
  which knows the run it belongs to.

Signal handlers only record (gunicorn #3198 is the lesson): `signal` posts and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator

import structlog

from niodoo_supervisor.control.api import STOPPING, CommandResult
from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    Incident,
    LogEvent,
    ReloadAsked,
    ReloadDone,
    ReloadResult,
    Reply,
    RestartAsked,
    StopAsked,
)
from niodoo_supervisor.supervise.seams import Clock

__all__ = ["STOP_SIGNALS", "Dispatcher", "Reloader"]

log = structlog.get_logger("niodoo_supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Reloader = Callable[[], Awaitable[ReloadResult]]
# The operator's commands: each may carry a reply someone waits for.
_COMMANDS = (ReloadAsked, RestartAsked, AdapterLoadAsked, AdapterUnloadAsked)


class Dispatcher:
    def __init__(self, clock: Clock, reloader: Reloader | None) -> None:
        self.clock = clock
        self.reloader = reloader
        self.stop_asked = asyncio.Event()
        self._queue: asyncio.Queue[Incident] = asyncio.Queue()
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self._stop_watchers: set[asyncio.Event] = set()
        self._reload_replies: list[Reply] = []  # asked for the next reading of the file
        self._reading_for: tuple[Reply, ...] = ()  # asked for the reading under way
        self._closed = False

    @property
    def reloading(self) -> bool:
        """A reload is under way (its `ReloadDone` is still to come)."""
        return self._reload_task is not None and not self._reload_task.done()

    def post(self, incident: Incident) -> None:
        late = self._closed or self.stop_asked.is_set()
        if late and isinstance(incident, _COMMANDS) and incident.reply is not None:
            # Nobody will carry it out: its caller must not wait out the stop (or hang).
            _refuse([incident.reply], STOPPING)
            return
        if isinstance(incident, StopAsked):
            self.stop_asked.set()
            for watcher in self._stop_watchers:
                watcher.set()
        self._queue.put_nowait(incident)

    @contextlib.contextmanager
    def stop_from_now(self) -> Iterator[asyncio.Event]:
        """An event set by the next stop asked inside the block (not by one asked before,
        which `stop_asked` keeps): a stop that is already under way can still be hurried."""
        watcher = asyncio.Event()
        self._stop_watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._stop_watchers.discard(watcher)

    def signal(self, signum: int) -> None:
        """A signal handler: records what the signal asks for, nothing more."""
        if signum in STOP_SIGNALS:
            self.post(StopAsked(f"{signal.Signals(signum).name} received"))
        elif signum == signal.SIGHUP:
            self.post(ReloadAsked())

    async def next(self, timeout: float) -> Incident | None:
        """The next incident for the caller, waiting at most `timeout` seconds (None when the
        time is up). Queued ones come first even when no time is left. A reload request is
        taken here: it starts the reload task, and its result comes back later."""
        deadline = self.clock.monotonic() + timeout
        while True:
            incident = await self._get(deadline - self.clock.monotonic())
            if not isinstance(incident, ReloadAsked):
                return incident
            if incident.reply is not None:
                self._reload_replies.append(incident.reply)
            self._start_reload()

    async def _get(self, timeout: float) -> Incident | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=timeout)
        except asyncio.TimeoutError:
            return None

    def take_reload_results(self) -> list[ReloadDone]:
        """Remove and return the queued results of reloads, keeping everything else queued in
        order."""
        return [
            i for i in self._take(lambda i: isinstance(i, ReloadDone)) if isinstance(i, ReloadDone)
        ]

    def take_log_events(self, run: int) -> list[Event]:
        """Remove and return the queued log events of `run` (the lines read while it exited),
        keeping everything else queued in order."""
        taken = self._take(lambda i: isinstance(i, LogEvent) and i.run == run)
        return [i.event for i in taken if isinstance(i, LogEvent)]

    def _take(self, wanted: Callable[[Incident], bool]) -> list[Incident]:
        taken: list[Incident] = []
        kept: list[Incident] = []
        while not self._queue.empty():
            incident = self._queue.get_nowait()
            (taken if wanted(incident) else kept).append(incident)
        for incident in kept:
            self._queue.put_nowait(incident)
        return taken

    def _start_reload(self) -> None:
        if self.reloader is None:
            _refuse(self._reload_replies, "this supervisor cannot reload its config")
            self._reload_replies.clear()
            return
        if self.reloading:
            self._reload_again = True  # the file may have changed again since this one began
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload(self.reloader))

    async def _reload(self, reloader: Reloader) -> None:
        while True:
            self._reload_again = False
            self._reading_for, self._reload_replies = tuple(self._reload_replies), []
            log.info("reload_requested")
            try:
                result = await reloader()
            except Exception as exc:
                result = ReloadResult(None, None, [f"reload failed: {type(exc).__name__}: {exc}"])
            replies, self._reading_for = self._reading_for, ()
            self.post(ReloadDone(dataclasses.replace(result, replies=replies)))
            if not self._reload_again:
                return

    async def close(self) -> None:
        """End a reload still under way (a stop does not wait for it), and answer every
        command still waiting, and from now on every command posted: nobody will carry it
        out now."""
        self._closed = True
        task = self._reload_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        waiting = [*self._reading_for, *self._reload_replies]
        self._reading_for, self._reload_replies = (), []
        while not self._queue.empty():
            incident = self._queue.get_nowait()
            if isinstance(incident, ReloadDone):
                waiting.extend(incident.result.replies)
            elif isinstance(incident, _COMMANDS) and incident.reply is not None:
                waiting.append(incident.reply)
        _refuse(waiting, STOPPING)


def _refuse(replies: Iterable[Reply], why: str) -> None:
    for reply in replies:
        if not reply.done():
            reply.set_result(CommandResult(False, why))
