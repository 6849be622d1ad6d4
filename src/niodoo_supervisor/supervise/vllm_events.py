"""vLLM's log events as the supervisor records them: every one counted (the status shows the
counts), each logged as a `vllm_event` record within a rate limit per rule; start-up phases
as `progress` records instead (`progress`: the phase, seconds since launch, a summary) until
the start is over (READY).

A record's level is its rule's severity (and so its journal priority): `journalctl -p
warning` lists the trouble. While the supervisor stops vLLM on purpose (a SIGTERM to the
supervisor, a restart it decided), vLLM's shutdown lines are expected: even a clean SIGTERM
makes vLLM log `EngineDeadError`. Those are logged as info with `stop_requested=true` and the
rule's own severity as `rule_severity`, so a requested stop does not read as a crash.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import structlog

from niodoo_supervisor.control.metrics import SupervisorMetrics
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.supervise.event_limit import EventLogLimiter
from niodoo_supervisor.supervise.metrics_feed import count_log_event
from niodoo_supervisor.supervise.progress import StartProgress, log_progress

__all__ = ["VllmEventLog"]

# Shown as info during a requested stop: what a crash would show as an error or worse.
_STOP_LOWERS = frozenset({Severity.ERROR, Severity.CRITICAL})
_LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}

log = structlog.get_logger("niodoo_supervisor")


class VllmEventLog:
    def __init__(
        self,
        counters: EventCounters,
        limiter: EventLogLimiter | None = None,
        *,
        metrics: SupervisorMetrics | None = None,
    ) -> None:
        self.counters = counters
        self.metrics = metrics
        self.limiter = limiter or EventLogLimiter()
        self.stopping_on_purpose = False  # set by the loop around each stop it makes
        self.progress = StartProgress()  # the current start's (the loop begins one per launch)

    @contextlib.contextmanager
    def stopping(self) -> Iterator[None]:
        """Around a stop the supervisor itself asked for (set before vLLM is signalled)."""
        self.stopping_on_purpose = True
        try:
            yield
        finally:
            self.stopping_on_purpose = False

    def record(self, event: Event, now: float) -> None:
        """Count `event` and log it unless its rule is over its budget (`now`: monotonic)."""
        self.counters.add(event)
        on_purpose: dict[str, object] = {}
        severity = event.severity
        if self.stopping_on_purpose and severity in _STOP_LOWERS:
            on_purpose = {"stop_requested": True, "rule_severity": severity.value}
            severity = Severity.INFO
        if self.metrics is not None:
            count_log_event(self.metrics, event, severity)
        step = None
        if event.action is Action.PHASE and self.progress.starting:
            # A start-up phase: a `progress` record citing its numbers, not vLLM's line.
            step = self.progress.step(event, now)
            if step is None:
                return  # news for STATUS= only (a shard line between two quarters of the bar)
        admitted, suppressed = self.limiter.admit(event.rule, now)
        if suppressed:  # at the rule's level: held-back phase lines are no trouble
            log.log(
                _LEVELS[severity],
                "vllm_events_suppressed",
                rule=event.rule,
                suppressed=suppressed,
                reason="rate limit; the status counts them all",
            )
        if not admitted:
            return
        if step is not None:
            log_progress(step, event)
            return
        log.log(
            _LEVELS[severity],
            "vllm_event",
            rule=event.rule,
            severity=severity.value,
            action=event.action.value,
            process=event.process,
            vllm_pid=event.pid,
            details=event.details,
            hint=None if on_purpose else event.hint or None,  # a crash's advice
            line=event.message,
            **on_purpose,
        )
