"""What the supervisor feeds its Prometheus metrics (`control.metrics`): the metrics built on
the status board and the config's maintenance windows, and the plain values each hook passes
(a restart's reason, a check's figures, a log event's rule and severity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.maintenance_sections import Window
from niodoo_supervisor.control.gpu_metrics import GpuCollector
from niodoo_supervisor.control.metrics import SupervisorMetrics
from niodoo_supervisor.logs.builtin_rules import IGNORED_FIELDS_RULE, UNKNOWN_MODEL_RULE
from niodoo_supervisor.logs.rule_types import Event, Severity
from niodoo_supervisor.supervise.incidents import Outcome, OutcomeKind
from niodoo_supervisor.supervise.probes import CheckResult
from niodoo_supervisor.supervise.seams import Clock
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard
from niodoo_supervisor.supervise.windows import next_opening

__all__ = ["count_check", "count_log_event", "restart_reason", "supervisor_metrics", "window_wait"]


def supervisor_metrics(
    registry: CollectorRegistry, status: StatusBoard, clock: Clock, config: Callable[[], Config]
) -> SupervisorMetrics:
    """The metrics of a supervisor whose running config `config` returns (a reload changes
    the windows)."""
    registry.register(GpuCollector(lambda: status.gpus))
    return SupervisorMetrics(
        registry,
        status,
        states=[state.value for state in State],
        wall=clock.wall,
        window_wait=lambda: window_wait(config().maintenance.windows, clock.wall()),
        ignored_fields_top=config().supervisor.metrics.ignored_fields_top,
    )


def window_wait(windows: Sequence[Window], now: float) -> float:
    """Seconds from `now` (epoch) until a planned restart may happen: 0 inside a window and
    when no windows are configured (any time)."""
    opening = next_opening(windows, now)
    return 0.0 if opening is None else max(0.0, opening.timestamp() - now)


def restart_reason(outcome: Outcome) -> str:
    """The `restarts` label of a run that ended in a restart."""
    if outcome.cause is not None:
        return outcome.cause
    if outcome.kind is OutcomeKind.RELOAD:
        return "reload"
    # A failure that names a rule is an engine death /health confirmed; one that names
    # nothing else is vLLM's exit.
    return "engine_dead" if outcome.rule is not None else "crash"


def count_check(metrics: SupervisorMetrics, result: CheckResult, adapters: Sequence[str]) -> None:
    """A check's latency, failed probe and adapters served (those /v1/models listed with the
    right parent; none when its list was not read)."""
    latency = result.health.latency + (result.models.latency if result.models else 0.0)
    failed = None
    if not result.ok:
        all_listed = result.models is not None and result.models.ok
        failed = "health" if not result.health.ok else "effect" if all_listed else "models"
    listed = result.models is not None and result.models.status == 200
    served = [name for name in adapters if name not in result.missing] if listed else []
    metrics.checked(latency, failed_probe=failed, expected=len(adapters), served=len(served))


def count_log_event(metrics: SupervisorMetrics, event: Event, severity: Severity) -> None:
    """A log event by rule and `severity` (as logged), the fields an ignored-fields line
    names and the model an unknown-model line names."""
    metrics.log_event(event.rule, severity.value)
    if event.rule == IGNORED_FIELDS_RULE:
        names = [str(name) for name in event.details.get("fields", [])]
        metrics.ignored_request_fields(names, int(event.details.get("more_fields", 0)))
    elif event.rule == UNKNOWN_MODEL_RULE:
        metrics.unknown_model(str(event.details.get("model", "")))
