"""The supervisor's Prometheus metrics (`niodoo_supervisor_*`), on the `CollectorRegistry` the
control API serves at GET /metrics.

What the status board already holds (the state, a pending restart, a drain, vLLM's version)
is read at scrape time by a collector, so nothing has to keep a copy up to date. What happens
(a restart, a check, a log event, an ignored request field) is counted by one call where it
happens. Nothing here knows the supervisor's types: `supervise` passes plain values, and the
board is read through `BoardView`.

Every label has a bounded set of values: restart reasons are a fixed table (anything else is
"other"), states are the state table's, rules are the configured rule table, and ignored
request fields and unknown model names, which clients choose, keep their own label only for
the first `ignored_fields_top` distinct names; the rest count as "(other)", as in the status
file.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "CHECK_BUCKETS",
    "MAX_FIELD_LABEL",
    "OTHER",
    "RESTART_REASONS",
    "BoardView",
    "SupervisorMetrics",
]

PREFIX = "niodoo_supervisor_"
# Why vLLM was started again. `crash`: it exited; `engine_dead`: its engine died (a log line
# confirmed by /health 503); `unhealthy`: failed checks in a row; `hung`: silent or not
# answering while starting; `start_timeout`: not ready within startup_timeout; `reload`: a new
# config that needs a restart; `operator`: asked for (`restart`); `other`: anything else.
RESTART_REASONS = (
    "crash",
    "engine_dead",
    "unhealthy",
    "hung",
    "start_timeout",
    "reload",
    "operator",
    "other",
)
# A local HTTP probe answers in milliseconds; the top buckets cover a busy engine and the
# probe timeout (5 s by default).
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_FIELD_LABEL = 64  # characters of an ignored field's name kept in its label
OTHER = "(other)"


class BoardView(Protocol):
    """What the collector reads of the status board at scrape time."""

    state: str
    since: float  # wall-clock time the state began
    vllm_version: str | None
    pending_restart: dict[str, Any] | None
    drain: dict[str, Any] | None


def field_label(name: str) -> str:
    """A client-chosen field name as a label value: printable, at most MAX_FIELD_LABEL
    characters (a trailing "…" says it was cut)."""
    printable = "".join(c if c.isprintable() else "?" for c in name)
    if len(printable) > MAX_FIELD_LABEL:
        return printable[:MAX_FIELD_LABEL] + "…"
    return printable


class SupervisorMetrics:
    """The metrics of one supervisor, registered on `registry`.

    `board` is read at scrape time; `wall` is the wall clock (the state's age); `window_wait`
    gives the seconds until a planned restart may happen (0 inside a window or when no windows
    are configured); `states` are every state's name (each gets a sample, 1 for the current).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        board: BoardView,
        *,
        states: Sequence[str],
        wall: Callable[[], float],
        window_wait: Callable[[], float],
        ignored_fields_top: int = 20,
    ) -> None:
        self.restarts = Counter(
            PREFIX + "restarts",
            "vLLM restarts by reason (crash, engine_dead, unhealthy, hung, start_timeout, "
            "reload, operator, other).",
            ["reason"],
            registry=registry,
        )
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)  # every reason shows, 0 until it happens
        self.check_latency = Histogram(
            PREFIX + "check_latency_seconds",
            "Time one check of vLLM took (/health, then /v1/models).",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.check_failures = Counter(
            PREFIX + "check_failures",
            "Checks of vLLM that failed, by the probe that failed (health, models, effect: an "
            "adapter's request of lora.verify's effect probe).",
            ["probe"],
            registry=registry,
        )
        for probe in ("health", "models", "effect"):
            self.check_failures.labels(probe)
        self.log_events = Counter(
            PREFIX + "log_events",
            "vLLM log events by rule and severity (info during a stop the supervisor asked for).",
            ["rule", "severity"],
            registry=registry,
        )
        self.ignored_fields = Counter(
            PREFIX + "ignored_request_fields",
            f"Request fields vLLM ignored, by name: the first {ignored_fields_top} distinct "
            f"names, the rest as {OTHER}.",
            ["field"],
            registry=registry,
        )
        self.unknown_models = Counter(
            PREFIX + "unknown_model_requests",
            f"Requests for a model vLLM does not serve (HTTP 404, as vLLM logs them), by "
            f"name: the first {ignored_fields_top} distinct names, the rest as {OTHER}.",
            ["model"],
            registry=registry,
        )
        self.adapters_expected = Gauge(
            PREFIX + "adapters_expected",
            "Adapters the config names (what the last check asked /v1/models for).",
            registry=registry,
        )
        self.adapters_served = Gauge(
            PREFIX + "adapters_served",
            "Adapters the last check found in /v1/models with the right parent (0 when it "
            "could not read the list).",
            registry=registry,
        )
        self.adapter_no_effects = Counter(
            PREFIX + "adapter_no_effect",
            "Effect probes (lora.verify) that found an adapter serving the base model's "
            f"output, by adapter (names lora.adapters lists; others as {OTHER}).",
            ["adapter"],
            registry=registry,
        )
        self._top = ignored_fields_top
        self._field_names: set[str] = set()
        self._model_names: set[str] = set()
        registry.register(_BoardCollector(board, tuple(states), wall, window_wait))

    def restarted(self, reason: str) -> None:
        self.restarts.labels(reason if reason in RESTART_REASONS else "other").inc()

    def checked(
        self, latency: float, *, failed_probe: str | None, expected: int, served: int
    ) -> None:
        """One check: its latency, the probe that failed (None: it passed), and how many of
        the `expected` adapters vLLM `served`."""
        self.check_latency.observe(latency)
        if failed_probe is not None:
            self.check_failures.labels(failed_probe).inc()
        self.adapters_expected.set(expected)
        self.adapters_served.set(served)

    def adapter_no_effect(self, adapter: str, configured: Collection[str]) -> None:
        self.adapter_no_effects.labels(adapter if adapter in configured else OTHER).inc()

    def log_event(self, rule: str, severity: str) -> None:
        self.log_events.labels(rule, severity).inc()

    def ignored_request_fields(self, names: Sequence[str], more: int = 0) -> None:
        """Field names one request had ignored; `more`: how many the log line held beyond."""
        for name in names:
            self.ignored_fields.labels(self._label(name, self._field_names)).inc()
        if more > 0:
            self.ignored_fields.labels(OTHER).inc(more)

    def unknown_model(self, name: str) -> None:
        """One request for a model vLLM does not serve; `name` is the client's."""
        self.unknown_models.labels(self._label(name, self._model_names)).inc()

    def _label(self, name: str, seen: set[str]) -> str:
        label = field_label(name)
        if label in seen:
            return label
        if label == OTHER or len(seen) >= self._top:
            return OTHER
        seen.add(label)
        return label


class _BoardCollector(Collector):
    """The metrics read off the status board when scraped."""

    def __init__(
        self,
        board: BoardView,
        states: tuple[str, ...],
        wall: Callable[[], float],
        window_wait: Callable[[], float],
    ) -> None:
        self.board = board
        self.states = states
        self.wall = wall
        self.window_wait = window_wait

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        board = self.board
        state = GaugeMetricFamily(
            PREFIX + "state", "1 for the supervisor's current state, 0 for the others.",
            labels=["state"],
        )  # fmt: skip
        for name in self.states:
            state.add_metric([name], 1.0 if name == board.state else 0.0)
        yield state
        yield _gauge("state_duration_seconds", "Seconds since the current state began.",
                     max(0.0, self.wall() - board.since))  # fmt: skip
        yield _gauge(
            "vllm_up",
            "1 while vLLM is READY (its last check passed), else 0.",
            1.0 if board.state == "READY" else 0.0,
        )
        info = InfoMetricFamily(PREFIX + "vllm", "The installed vLLM's version.")
        info.add_metric([], {"version": board.vllm_version or "unknown"})
        yield info
        yield _gauge(
            "next_maintenance_window_seconds",
            "Seconds until a planned restart may happen: 0 inside a maintenance window, and "
            "always 0 when no windows are configured (any time).",
            self.window_wait(),
        )
        yield _gauge(
            "restart_pending",
            "1 while a restart waits for the next maintenance window.",
            0.0 if board.pending_restart is None else 1.0,
        )
        yield _gauge(
            "drain_in_progress",
            "1 while vLLM drains its requests before a planned restart or stop.",
            0.0 if board.drain is None else 1.0,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)
