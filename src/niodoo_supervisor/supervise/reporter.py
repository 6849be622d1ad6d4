"""What the supervisor tells the world: one state change is one `state_changed` log event, the
systemd notification that goes with it and one write of status.json. The reporter holds the
current state and checks every change against the transition table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import structlog

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.probes import CheckResult
from niodoo_supervisor.supervise.seams import Clock
from niodoo_supervisor.supervise.states import ALLOWED, IllegalTransition, State
from niodoo_supervisor.supervise.status_file import CrashReport, StatusBoard
from niodoo_supervisor.supervise.systemd import Notifier

__all__ = ["Reporter"]

log = structlog.get_logger("niodoo_supervisor")

_WATCHDOG_EVERY = 5.0  # seconds; systemd's WatchdogSec in the unit is far longer


class Reporter:
    def __init__(
        self,
        notifier: Notifier,
        clock: Clock,
        state_dir: Path,
        status: StatusBoard,
        counters: EventCounters,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self.state_dir = state_dir  # a reload may name another one
        self.status = status
        self.counters = counters
        self.state = State.STOPPED

    def transition(
        self,
        expected: Collection[State],
        new: State,
        reason: str,
        *,
        notify: tuple[str, ...] = (),
        **fields: object,
    ) -> None:
        """Move to `new` from one of the `expected` states; log it (with `fields`), write the
        status and send `notify`."""
        old = self.state
        if old not in expected:
            raise IllegalTransition(
                old, new, f"expected to leave {sorted(s.value for s in expected)}"
            )
        if new not in ALLOWED[old]:
            raise IllegalTransition(old, new, "not in the transition table")
        self.state = new
        log.info("state_changed", old=old.value, new=new.value, reason=reason, **fields)
        self.status.state, self.status.since, self.status.reason = (
            new.value,
            self.clock.wall(),
            reason,
        )
        self.write_status()
        if notify:
            self.notifier.send(*notify)

    def launched(self, pid: int, served: str, adapters: Sequence[Adapter]) -> None:
        status = self.status
        status.starts += 1
        status.vllm_pid = pid
        status.served_model = served
        status.adapters = [adapter.name for adapter in adapters]
        # STOPPED/BACKOFF -> STARTING: vLLM launched
        self.transition(
            {State.STOPPED, State.BACKOFF},
            State.STARTING,
            "launched vLLM",
            notify=systemd.status(f"starting vLLM (pid {pid})"),
            vllm_pid=pid,
        )

    def stopped_while_idle(self, reason: str) -> int:
        # BACKOFF/STOPPED -> STOPPING -> STOPPED: no vLLM is running, nothing to end
        self.transition(
            {State.BACKOFF, State.STOPPED},
            State.STOPPING,
            reason,
            notify=systemd.stopping("stopping: nothing running"),
        )
        self.transition({State.STOPPING}, State.STOPPED, "nothing running")
        return exitcodes.OK

    def fatal(self, reason: str, code: int) -> int:
        # STOPPED/BACKOFF/STARTING -> FATAL: retrying cannot help, or the crash-loop limit
        self.transition(
            {State.STOPPED, State.BACKOFF, State.STARTING},
            State.FATAL,
            reason,
            notify=systemd.status(f"FATAL: {reason}"),
        )
        log.error("fatal", reason=reason, exit_code=code)
        return code

    def reload_refused(self, errors: list[str]) -> None:
        for error in errors:
            log.error("reload_refused", problem=error)
        self.notify(
            *systemd.status(
                f"reload refused ({len(errors)} problem(s)); still running the old config"
            )
        )

    @contextlib.asynccontextmanager
    async def watchdog_fed(self, extend: float) -> AsyncIterator[None]:
        """Around a long wait on purpose: systemd's timeout is extended by `extend` seconds
        and the watchdog fed meanwhile (waiting on purpose is not hanging)."""
        self.notify(*systemd.extend_timeout(extend), *systemd.WATCHDOG)
        keepalive = asyncio.get_running_loop().create_task(self._feed_watchdog())
        try:
            yield
        finally:
            keepalive.cancel()

    async def _feed_watchdog(self) -> None:
        while True:
            await asyncio.sleep(_WATCHDOG_EVERY)
            self.notify(*systemd.WATCHDOG)

    def notify(self, *fields: str) -> None:
        self.notifier.send(*fields)

    def write_status(self) -> None:
        self.status.notify_dropped = self.notifier.dropped
        self.status.events = self.counters.as_dict()
        self.status.write(self.state_dir)

    def note_check(self, result: CheckResult, dropped_bytes: int) -> None:
        """Record a check in the status (written with the next status write)."""
        self.status.last_check = {
            "at": self.clock.wall(),
            "ok": result.ok,
            "reason": result.reason,
            "health_status": result.health.status,
            "latency_s": round(
                result.health.latency + (result.models.latency if result.models else 0.0), 4
            ),
        }
        self.status.log_dropped_bytes = dropped_bytes

    def crash_report(self, reason: str, rule: str | None, lines: list[str]) -> None:
        self.status.last_crash = CrashReport(self.clock.wall(), reason, rule, lines)
        log.error("crash_report", reason=reason, rule=rule, last_lines="\n".join(lines))
