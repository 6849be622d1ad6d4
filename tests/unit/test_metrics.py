"""The Prometheus metrics: each hook driven, then the registry scraped as Prometheus would
read it (its text format, parsed back)."""

from __future__ import annotations

from datetime import datetime, time, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from metrics_scrape import Samples, labelled, scrape, value
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.config.maintenance_sections import Window
from niodoo_supervisor.control.metrics import (
    MAX_FIELD_LABEL,
    OTHER,
    RESTART_REASONS,
    SupervisorMetrics,
)
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.supervise.incidents import Outcome, OutcomeKind
from niodoo_supervisor.supervise.metrics_feed import (
    count_check,
    count_log_event,
    restart_reason,
    window_wait,
)
from niodoo_supervisor.supervise.probes import CheckResult, ProbeResult
from niodoo_supervisor.supervise.reload_diff import KeyClass, class_of
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard
from niodoo_supervisor.supervise.vllm_events import VllmEventLog

# Tuesday 1 December 2026, 12:00 UTC (13:00 in Berlin).
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc).timestamp()
WED_BERLIN = Window(start=time(2, 0), end=time(4, 0), tz="Europe/Berlin", days=(2,))


class Metered:
    """A `SupervisorMetrics` on its own registry, over a status board, at a fixed time."""

    def __init__(self, *, top: int = 20, windows: tuple[Window, ...] = ()) -> None:
        self.registry = CollectorRegistry()
        self.board = StatusBoard(since=NOW - 30.0, vllm_version="0.32.0")
        self.now = NOW
        self.windows = windows
        self.metrics = SupervisorMetrics(
            self.registry,
            self.board,
            states=[state.value for state in State],
            wall=lambda: self.now,
            window_wait=lambda: window_wait(self.windows, self.now),
            ignored_fields_top=top,
        )

    def scrape(self) -> Samples:
        return scrape(self.registry)


def _event(rule: str, severity: Severity = Severity.WARNING, **details: Any) -> Event:
    return Event(rule, severity, Action.LOG, "", rule, "APIServer", 7, None, (rule,), details)


def _fields(*names: str, more: int = 0) -> Event:
    details: dict[str, Any] = {"fields": list(names)}
    if more:
        details["more_fields"] = more
    return _event("ignored_request_fields", **details)


def test_the_state_gauge_follows_the_board_at_scrape_time() -> None:
    metered = Metered()
    metered.board.state = "STARTING"
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_state", state="STARTING") == 1.0
    others = [value(samples, "niodoo_supervisor_state", state=s.value) for s in State]
    assert sum(others) == 1.0 and len(others) == len(State)
    assert value(samples, "niodoo_supervisor_state_duration_seconds") == 30.0
    assert value(samples, "niodoo_supervisor_vllm_up") == 0.0
    metered.board.state, metered.board.since = "READY", NOW - 5.0
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_state", state="STARTING") == 0.0
    assert value(samples, "niodoo_supervisor_state", state="READY") == 1.0
    assert value(samples, "niodoo_supervisor_state_duration_seconds") == 5.0
    assert value(samples, "niodoo_supervisor_vllm_up") == 1.0
    assert value(samples, "niodoo_supervisor_vllm_info", version="0.32.0") == 1.0


def test_a_crash_restart_is_counted_by_its_reason_and_every_reason_shows() -> None:
    metered = Metered()
    metered.metrics.restarted(restart_reason(Outcome(OutcomeKind.FAILED, "vLLM exited with code 1")))  # fmt: skip
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_restarts_total", reason="crash") == 1.0
    for reason in RESTART_REASONS:
        if reason != "crash":
            assert value(samples, "niodoo_supervisor_restarts_total", reason=reason) == 0.0


def test_restart_reasons_come_from_the_outcome_and_stay_in_the_fixed_set() -> None:
    failed = OutcomeKind.FAILED
    assert restart_reason(Outcome(failed, "engine died", "engine_dead")) == "engine_dead"
    assert restart_reason(Outcome(failed, "3 failed checks", cause="unhealthy")) == "unhealthy"
    assert restart_reason(Outcome(OutcomeKind.RELOAD, "config changed: model.path")) == "reload"
    metered = Metered()
    metered.metrics.restarted("something new")
    assert value(metered.scrape(), "niodoo_supervisor_restarts_total", reason="other") == 1.0


def test_a_check_is_observed_with_its_latency_failure_and_adapters() -> None:
    metered = Metered()
    health = ProbeResult(True, 200, 0.003)
    count_check(metered.metrics, CheckResult(health, ProbeResult(True, 200, 0.004)), ["a", "b"])
    missing_b = ProbeResult(False, 200, 0.004, "missing b")
    count_check(metered.metrics, CheckResult(health, missing_b, ("b",)), ["a", "b"])
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_check_latency_seconds_count") == 2.0
    assert value(samples, "niodoo_supervisor_check_latency_seconds_sum") == pytest.approx(0.014)
    assert value(samples, "niodoo_supervisor_check_latency_seconds_bucket", le="0.005") == 0.0
    assert value(samples, "niodoo_supervisor_check_latency_seconds_bucket", le="0.01") == 2.0
    assert value(samples, "niodoo_supervisor_check_failures_total", probe="models") == 1.0
    assert value(samples, "niodoo_supervisor_check_failures_total", probe="health") == 0.0
    assert value(samples, "niodoo_supervisor_adapters_expected") == 2.0
    assert value(samples, "niodoo_supervisor_adapters_served") == 1.0
    refused = ProbeResult(False, None, 0.001, "connection refused")
    count_check(metered.metrics, CheckResult(refused, None), ["a", "b"])
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_check_failures_total", probe="health") == 1.0
    assert value(samples, "niodoo_supervisor_adapters_served") == 0.0  # no list was read


def test_log_events_are_counted_by_rule_and_severity_as_logged() -> None:
    metered = Metered()
    events = VllmEventLog(EventCounters(), metrics=metered.metrics)
    for at in range(50):  # far over the log's rate limit: every one is still counted
        events.record(_event("engine_dead", Severity.CRITICAL), float(at) / 100)
    with events.stopping():  # the supervisor's own stop: logged (and counted) as info
        events.record(_event("engine_dead", Severity.CRITICAL), 1.0)
    events.record(_event("removed_guided_fields"), 1.0)
    samples = metered.scrape()
    engine_dead = "niodoo_supervisor_log_events_total"
    assert value(samples, engine_dead, rule="engine_dead", severity="critical") == 50.0
    assert value(samples, engine_dead, rule="engine_dead", severity="info") == 1.0
    assert value(samples, engine_dead, rule="removed_guided_fields", severity="warning") == 1.0


def test_ignored_fields_beyond_the_first_n_names_count_as_other() -> None:
    metered = Metered(top=3)
    metrics = metered.metrics
    count_log_event(metrics, _fields("lora_name", "guided_json", "x1"), Severity.WARNING)
    count_log_event(metrics, _fields("x2", "x3", "lora_name"), Severity.WARNING)
    count_log_event(metrics, _fields("x4", more=5), Severity.WARNING)
    samples = metered.scrape()
    per_field = labelled(samples, "niodoo_supervisor_ignored_request_fields_total", "field")
    assert per_field == {"lora_name": 2.0, "guided_json": 1.0, "x1": 1.0, OTHER: 8.0}
    assert value(samples, "niodoo_supervisor_log_events_total",
                 rule="ignored_request_fields", severity="warning") == 3.0  # fmt: skip


def test_a_hostile_field_name_is_cut_and_made_printable() -> None:
    metered = Metered()
    metered.metrics.ignored_request_fields(["A" * 10_240, "bad\nname\x00"])
    metered.metrics.ignored_request_fields([OTHER])  # a client's "(other)" is the other bucket
    fields = labelled(metered.scrape(), "niodoo_supervisor_ignored_request_fields_total", "field")
    assert fields == {"A" * MAX_FIELD_LABEL + "…": 1.0, "bad?name?": 1.0, OTHER: 1.0}
    assert b"A" * (MAX_FIELD_LABEL + 1) not in generate_latest(metered.registry)


def test_seconds_until_a_window_tomorrow_with_a_fixed_clock() -> None:
    metered = Metered(windows=(WED_BERLIN,))
    # Wednesday 02:00 in Berlin (UTC+1 in December) is 13 hours after Tuesday 12:00 UTC.
    assert value(metered.scrape(), "niodoo_supervisor_next_maintenance_window_seconds") == 13 * 3600
    metered.now = NOW + 13.5 * 3600  # inside the window
    assert value(metered.scrape(), "niodoo_supervisor_next_maintenance_window_seconds") == 0.0
    metered.windows = ()  # no windows: any time
    assert value(metered.scrape(), "niodoo_supervisor_next_maintenance_window_seconds") == 0.0


def test_pending_restart_and_drain_are_read_off_the_board() -> None:
    metered = Metered()
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_restart_pending") == 0.0
    assert value(samples, "niodoo_supervisor_drain_in_progress") == 0.0
    metered.board.pending_restart = {"why": "config changed: model.path", "at": NOW + 60}
    metered.board.drain = {"since": NOW, "running": 3, "waiting": 0}
    samples = metered.scrape()
    assert value(samples, "niodoo_supervisor_restart_pending") == 1.0
    assert value(samples, "niodoo_supervisor_drain_in_progress") == 1.0


def test_ignored_fields_top_is_a_config_key_read_at_start(tmp_path: Path) -> None:
    document = {
        "server": {"python": "python3"},
        "model": {"path": str(tmp_path), "served_name": "tiny"},
        "supervisor": {"metrics": {"ignored_fields_top": 0}, "state_dir": str(tmp_path)},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, {})
    assert config is None
    (problem,) = [p.format() for p in problems]
    assert "supervisor.metrics.ignored_fields_top" in problem
    # A reload does not restart vLLM for it: it waits for the supervisor's own restart.
    assert class_of("supervisor.metrics.ignored_fields_top") is KeyClass.DAEMON
