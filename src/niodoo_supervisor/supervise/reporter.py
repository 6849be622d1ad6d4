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
from niodoo_supervisor.config.maintenance_sections import Window
from niodoo_supervisor.control.metrics import SupervisorMetrics
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.request_mistakes import request_mistakes
from niodoo_supervisor.supervise import systemd, windows
from niodoo_supervisor.supervise.metrics_feed import count_check
from niodoo_supervisor.supervise.probes import CheckResult
from niodoo_supervisor.supervise.reload_diff import ConfigDiff, KeyClass
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
        *,
        metrics: SupervisorMetrics | None = None,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self.state_dir = state_dir  # where the supervisor started (a reload cannot move it)
        self.windows: Sequence[Window] = ()  # the newest accepted config's (the status shows them)
        self.status = status
        self.counters = counters
        self.metrics = metrics
        self.state = State.STOPPED
        self._mistakes_sent: list[str] = []  # the request mistakes STATUS= last showed

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
        # STOPPED/BACKOFF -> STARTING: vLLM launched; STOPPING -> STARTING: a planned restart
        self.transition(
            {State.STOPPED, State.BACKOFF, State.STOPPING},
            State.STARTING,
            "launched vLLM",
            notify=systemd.status(f"starting vLLM (pid {pid})"),
            vllm_pid=pid,
        )

    def stopped_while_idle(self, reason: str) -> int:
        # BACKOFF/STOPPED -> STOPPING -> STOPPED: no vLLM is running, nothing to end (from
        # STOPPING, a planned restart's old vLLM has just been stopped)
        if self.state is not State.STOPPING:
            self.transition(
                {State.BACKOFF, State.STOPPED},
                State.STOPPING,
                reason,
                notify=systemd.stopping("stopping: nothing running"),
            )
        else:
            self.notify(*systemd.stopping(f"stopping: {reason}"))
        self.transition({State.STOPPING}, State.STOPPED, "nothing running")
        return exitcodes.OK

    def fatal(self, reason: str, code: int) -> int:
        # STOPPED/BACKOFF/STARTING -> FATAL: retrying cannot help, or the crash-loop limit;
        # STOPPING -> FATAL: a planned restart's new vLLM cannot be executed
        self.transition(
            {State.STOPPED, State.BACKOFF, State.STARTING, State.STOPPING},
            State.FATAL,
            reason,
            notify=systemd.status(f"FATAL: {reason}"),
        )
        log.error("fatal", reason=reason, exit_code=code)
        return code

    def reload_refused(self, errors: list[str]) -> None:
        for error in errors:
            log.error("reload_refused", problem=error)
        # Still a reload as systemd sees it: RELOADING=1, then READY=1 (the old config serves).
        text = f"reload refused ({len(errors)} problem(s)); still running the old config"
        self._reload_done(text, vllm_running=True)

    def reload_taken(
        self, change: ConfigDiff, *, vllm_running: bool, pending: str | None = None
    ) -> None:
        """Say what a reloaded config changes: nothing, settings applied at once, or a
        restart of vLLM (now, or at the next start when none runs); `pending` is the status
        text of a restart held for a maintenance window, when one is."""
        changes = [each.describe() for each in change.changes]
        if change.needs_restart:
            reason = change.restart_reason()
            when = "now" if vllm_running else "at the next start"
            if pending:
                when = "at the next maintenance window"
            keys = change.keys(KeyClass.RESTART)
            log.info("reload_restart", keys=keys, changes=changes, reason=reason, when=when)
            if pending:
                self._reload_done(pending, vllm_running)
            else:
                self.notify(*systemd.reloading(f"restarting vLLM {when}: {reason}"))
        elif change.unchanged:
            log.info("reload_unchanged", reason="the config is the running one: nothing to do")
            self._reload_done("reloaded: config unchanged, vLLM keeps serving", vllm_running)
        else:
            keys = change.keys(KeyClass.SUPERVISOR) + change.keys(KeyClass.LIVE)
            log.info("reload_applied", keys=keys, changes=changes, restart=False)
            self._reload_done(
                f"reloaded: applied {', '.join(keys)} without a restart", vllm_running
            )
        if pending and not change.needs_restart:
            self.notify(*systemd.status(pending))  # what is still held for a window
        not_applied = change.keys(KeyClass.DAEMON)
        if not_applied:
            log.warning(
                "reload_not_applied",
                keys=not_applied,
                reason="read once when the supervisor starts: `systemctl restart` applies them",
            )

    def _reload_done(self, text: str, vllm_running: bool) -> None:
        if not vllm_running:
            return  # the backoff's status (when the next start comes) still holds
        if self.state in (State.READY, State.UNHEALTHY):
            # systemd (Type=notify-reload) pairs RELOADING=1 with the READY=1 that ends it.
            self.notify(*systemd.reloading(text))
            self.notify("READY=1")
        else:
            self.notify(*systemd.status(text))  # not ready yet: READY=1 comes with readiness

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

    def serving_text(self, text: str) -> str:
        """STATUS= while vLLM serves: `text` and the request mistakes counted (lora_name,
        unknown models), which survive restarts of vLLM."""
        self._mistakes_sent = request_mistakes(self.counters.as_dict())
        return "; ".join([text, *self._mistakes_sent])

    def refresh_serving_text(self, text: str) -> None:
        """While READY, resend STATUS= (`text` plus the mistakes) when the mistakes changed."""
        if self.state is State.READY and request_mistakes(self.counters.as_dict()) != (
            self._mistakes_sent
        ):
            self.notify(*systemd.status(self.serving_text(text)))

    def notify(self, *fields: str) -> None:
        self.notifier.send(*fields)

    def write_status(self) -> None:
        self.status.notify_dropped = self.notifier.dropped
        self.status.events = self.counters.as_dict()
        self.status.maintenance = windows.summary(self.windows, self.clock.wall())
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
        if self.metrics is not None:
            count_check(self.metrics, result, self.status.adapters)

    def crash_report(self, reason: str, rule: str | None, lines: list[str]) -> None:
        self.status.last_crash = CrashReport(self.clock.wall(), reason, rule, lines)
        log.error("crash_report", reason=reason, rule=rule, last_lines="\n".join(lines))
