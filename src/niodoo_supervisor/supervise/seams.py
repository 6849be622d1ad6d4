"""The edges the supervisor's parts are handed (honcho's `_clock`/`_child_ctor` seams): the
clock, the launcher of vLLM and the run it returns, and the prober. The notifier's protocol
lives with the systemd notifier (`systemd.Notifier`).

The parts read time only through `Clock`, and wait only with asyncio (whose clock is the same
`time.monotonic` in production): a test runs them on an event loop with virtual time and a
clock that reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.supervise.probes import CheckResult

__all__ = ["Clock", "Launcher", "Prober", "ProberFactory", "Run", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for intervals and deadlines (the event loop's clock)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for what people read (status.json)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class Run(Protocol):
    """One launched vLLM, as the loop and the watcher see it."""

    @property
    def pid(self) -> int: ...

    @property
    def started(self) -> float:
        """When it was spawned (monotonic)."""
        ...

    @property
    def dropped_bytes(self) -> int:
        """Output the log sinks could not take (the status shows it)."""
        ...

    def silent_for(self, now: float) -> float:
        """Seconds since vLLM last wrote a line (or was spawned)."""
        ...

    def tail(self, count: int) -> list[str]: ...

    def last_line(self) -> str: ...

    def mark_serving(self) -> None:
        """vLLM answers HTTP: clients can make it write lines, so its fatal lines may be theirs."""
        ...

    def serve_adapters(self, adapters: Sequence[str]) -> None:
        """The adapters it serves changed live (the hints of its log events name them)."""
        ...

    def record_processes(self) -> None: ...

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every line written so far has been read."""
        ...

    async def stop(self, grace: float) -> None: ...


class Launcher(Protocol):
    async def launch(
        self,
        config: Config,
        plan: LaunchPlan,
        *,
        on_event: Callable[[Event], None],
        on_exit: Callable[[int, int], None],
    ) -> Run:
        """Spawn vLLM; raises `run.LaunchError` when it cannot be started at all."""
        ...

    def close(self) -> None: ...


class Prober(Protocol):
    async def check(self) -> CheckResult: ...

    async def aclose(self) -> None: ...

    def expect_adapters(self, names: Sequence[str]) -> None:
        """The adapters to find in /v1/models from now on (changed in the running vLLM)."""
        ...


ProberFactory = Callable[[Config, str | None], Prober]
