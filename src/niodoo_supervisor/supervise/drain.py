"""A drained stop: take traffic away from vLLM first, then let it finish what it runs.

vLLM's `/health` stays 200 while it drains, so only the supervisor can tell a load balancer
"not ready" (kserve and llm-d do the same with a preStop hook): the drain is announced in the
status (readiness endpoints answer 503 from then on), `drain.announce` seconds pass, then vLLM
gets its SIGTERM and finishes its running requests for up to `--shutdown-timeout` seconds
while this module reads `vllm:num_requests_running` and `vllm:num_requests_waiting` off its
`/metrics` and reports them (status.json and systemd's STATUS=) until it has exited. The
reads begin once the SIGTERM is sent, so a slow `/metrics` never delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.probes import vllm_client, vllm_url
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.seams import Clock, Run
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard

__all__ = [
    "POLL_EVERY",
    "Drain",
    "LoadReader",
    "OpenLoadReader",
    "RequestLoad",
    "ready_for_traffic",
    "vllm_load_reader",
]

log = structlog.get_logger("niodoo_supervisor")

POLL_EVERY = 0.5  # seconds between two reads of vLLM's request gauges while it drains
_SCRAPE_TIMEOUT = 1.0
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class RequestLoad:
    """vLLM's requests as its gauges say (summed over every engine and model label)."""

    running: int
    waiting: int


# Reads vLLM's request gauges; None when they cannot be read (a failed read is not fatal).
LoadReader = Callable[[], Awaitable["RequestLoad | None"]]
# Opens a LoadReader for one drain; what it holds (an HTTP client) is closed when it ends.
OpenLoadReader = Callable[[], AbstractAsyncContextManager[LoadReader]]


def ready_for_traffic(state: State, status: StatusBoard) -> bool:
    """What a readiness endpoint answers: vLLM is ready and no drain has begun."""
    return state is State.READY and status.drain is None


def parse_load(text: str) -> RequestLoad | None:
    """The two gauges in a Prometheus exposition, None when either is missing."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (_RUNNING, _WAITING):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    if _RUNNING not in sums or _WAITING not in sums:
        return None
    return RequestLoad(round(sums[_RUNNING]), round(sums[_WAITING]))


@contextlib.asynccontextmanager
async def vllm_load_reader(
    config: Config, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[LoadReader]:
    """Reads the gauges of the vLLM `config` describes over one client, closed on leaving
    (`/metrics` needs no API key). A failed read is logged once, then reads as unknown."""
    failed = False

    async with vllm_client(vllm_url(config), None, _SCRAPE_TIMEOUT, transport) as client:

        async def read() -> RequestLoad | None:
            nonlocal failed
            try:
                response = await client.get("/metrics")
                return parse_load(response.text) if response.status_code == 200 else None
            except Exception as exc:  # odd /metrics text must not end a stop either
                if not failed:
                    failed = True
                    # vLLM going away mid-drain is expected; text the parser chokes on is not.
                    level = log.debug if isinstance(exc, httpx.HTTPError) else log.warning
                    level("drain_gauges_unreadable", error=repr(exc))
                return None

        yield read


class Drain:
    """One drained stop of one run: `announce`, then `stop`. The status's `drain` field is
    set from the first until the second ends."""

    def __init__(
        self, reporter: Reporter, clock: Clock, open_reader: OpenLoadReader, timeout: int
    ) -> None:
        self.reporter = reporter
        self.clock = clock
        self.open_reader = open_reader
        self.timeout = timeout  # the --shutdown-timeout the running vLLM was launched with
        self.last: RequestLoad | None = None
        self.at_start: RequestLoad | None = None  # the first read, just after the SIGTERM

    async def announce(self, seconds: float, cut_short: asyncio.Event) -> None:
        """Say not-ready, then wait `seconds` for load balancers to notice, or until
        `cut_short` (a stop asked meanwhile)."""
        self._show("announce", f"draining: not ready, SIGTERM to vLLM in {seconds:g}s")
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cut_short.wait(), timeout=seconds)

    async def stop(self, run: Run, grace: float) -> None:
        """SIGTERM vLLM (`run.stop`) and report its requests until it has exited; then the
        drain is over and the status says so. `drain_started` is logged with the first read,
        taken just after the SIGTERM."""
        started = self.clock.monotonic()
        async with self.open_reader() as read_load:
            # The poll's first step runs once `run.stop` first waits, its SIGTERM sent.
            poll = asyncio.get_running_loop().create_task(self._poll(read_load))
            try:
                await run.stop(grace)
            finally:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
                self.reporter.status.drain = None
                self.reporter.write_status()
        first = self.at_start
        log.info(
            "drain_finished",
            running_at_start=first.running if first else None,
            waiting_at_start=first.waiting if first else None,
            running_at_end=self.last.running if self.last else None,
            seconds=round(self.clock.monotonic() - started, 2),
        )

    async def _poll(self, read_load: LoadReader) -> None:
        try:
            self.last = await read_load()
        finally:  # even when vLLM was gone before the first read answered
            self.at_start = self.last
            log.info(
                "drain_started",
                running=self.last.running if self.last else None,
                waiting=self.last.waiting if self.last else None,
                timeout_s=self.timeout,
            )
        self._show("draining", self._status_text())
        while True:
            await asyncio.sleep(POLL_EVERY)
            load = await read_load()
            if load is not None and load != self.last:
                self.last = load
                self._show("draining", self._status_text())

    def _status_text(self) -> str:
        if self.last is None:
            return "draining: vLLM's request counts unknown"
        return f"draining: {self.last.running} running, {self.last.waiting} waiting"

    def _show(self, phase: str, text: str) -> None:
        status = self.reporter.status
        since = status.drain["since"] if status.drain else self.clock.wall()
        status.drain = {
            "since": since,
            "phase": phase,
            "running": self.last.running if self.last else None,
            "waiting": self.last.waiting if self.last else None,
            "timeout": self.timeout,
        }
        self.reporter.write_status()
        self.reporter.notify(*systemd.status(text))
