"""vLLM's log events as the supervisor records them: every one counted (the status shows the
counts), each logged as a `vllm_event` record within a rate limit per rule."""

from __future__ import annotations

import structlog

from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.supervise.event_limit import EventLogLimiter

__all__ = ["VllmEventLog"]

log = structlog.get_logger("niodoo_supervisor")


class VllmEventLog:
    def __init__(self, counters: EventCounters, limiter: EventLogLimiter | None = None) -> None:
        self.counters = counters
        self.limiter = limiter or EventLogLimiter()

    def record(self, event: Event, now: float) -> None:
        """Count `event` and log it unless its rule is over its budget (`now`: monotonic)."""
        self.counters.add(event)
        admitted, suppressed = self.limiter.admit(event.rule, now)
        if suppressed:
            log.warning(
                "vllm_events_suppressed",
                rule=event.rule,
                suppressed=suppressed,
                reason="rate limit; the status counts them all",
            )
        if admitted:
            log.info(
                "vllm_event",
                rule=event.rule,
                severity=event.severity.value,
                action=event.action.value,
                process=event.process,
                vllm_pid=event.pid,
                details=event.details,
                hint=event.hint or None,
                line=event.message,
            )
