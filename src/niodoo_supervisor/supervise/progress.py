"""How far a start of vLLM has come, in numbers: its phase events as `progress` records (the
phase, the seconds since launch and a short summary such as "KV cache 2,097,152 tokens",
never vLLM's whole line), the STATUS= text while it starts, and the `ready` record that names
the model, the adapters and the address.

Only while the start lasts: from READY on (`finished`), a phase line (an adapter loaded at
runtime) is an ordinary `vllm_event`, neither a step of the start nor STATUS= news.

Bounded whatever vLLM writes (and whatever line a client forges): tqdm's weight-shard bar
writes a line per shard, so a bar gives a record only when it passes 25, 50 and 75 % (its start
and its end are the `loading_weights` and `weights_loaded` records), each worker's bar
counted on its own; STATUS= changes at most once per `STATUS_EVERY` seconds; `vllm_events`
still puts each record through its per-rule limiter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.supervise import systemd

__all__ = [
    "MAX_BARS",
    "STATUS_EVERY",
    "StartProgress",
    "Step",
    "address",
    "log_progress",
    "log_ready",
    "serving_sentence",
    "summarize",
]

log = structlog.get_logger("niodoo_supervisor")

# systemd gets at most one STATUS= per second from a start: a flood of phase lines (tqdm's bar
# over hundreds of shards) must not flood sd_notify.
STATUS_EVERY = 1.0
EXCERPT = 60  # characters of vLLM's message a phase without a known summary cites
NAME = 64  # characters of an adapter's name or a model's path a summary keeps
MAX_NAMED = 8  # adapters a ready line names; it counts the rest
SHARDS_RULE = "weight_shards"
MAX_BARS = 64  # weight-shard bars followed at once (one per worker; forged pids are evicted)
# Phases that tell STATUS= where the start is but say nothing worth a record of their own
# ("Available routes are:" comes right after "Starting vLLM server on ...").
_STATUS_ONLY = frozenset(("routes",))


@dataclass(frozen=True)
class Step:
    """One `progress` record: `elapsed_s` since vLLM was launched."""

    phase: str
    elapsed_s: float
    summary: str


def _clip(text: str, limit: int = NAME) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _tail(path: str, limit: int = NAME) -> str:
    """A long path keeps its end, which names the model."""
    return path if len(path) <= limit else f"…{path[-(limit - 1) :]}"


def _secs(value: Any) -> str:
    """Seconds as vLLM wrote them (it writes %.2f, or whole seconds)."""
    if isinstance(value, float):
        return f"{value:.2f} s"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} s"
    raise TypeError(value)


# What each built-in phase rule says, from its event details (a missing or odd detail falls
# back to the phase and an excerpt of the line).
_SUMMARIES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "version": lambda d: f"vLLM {_clip(str(d['version']), 32)}",
    "engine_init": lambda _: "initializing the engine",
    "weights_loading": lambda d: f"loading weights of {_tail(str(d['model']))}",
    SHARDS_RULE: lambda d: f"loading weights: {int(d['done'])}/{int(d['total'])} shards",
    "weights_loaded": lambda d: f"weights loaded in {_secs(d['seconds'])}",
    "torch_compiled": lambda d: f"torch.compile took {_secs(d['seconds'])}",
    "kv_cache_sized": lambda d: f"KV cache {int(d['tokens']):,} tokens",
    "graphs_captured": lambda d: (
        f"CUDA graphs captured in {_secs(d['seconds'])} ({float(d['gib']):.2f} GiB)"
    ),
    "engine_ready": lambda d: f"engine ready in {_secs(d['seconds'])}",
    "lora_loaded": lambda d: f"adapter {_clip(str(d['adapter']))} loaded",
    "listening": lambda d: f"HTTP server starting on {_clip(str(d['address']))}",
    "routes": lambda _: "HTTP routes set up",  # STATUS= only
    "startup_complete": lambda _: "HTTP server started",
}


def _phase(event: Event) -> str:
    return str(event.details.get("phase", event.rule))


def summarize(event: Event) -> str:
    """A short sentence for a phase event: its numbers where vLLM gave them, else the phase and
    the start of vLLM's line (an operator's phase rule, or a line the rule half-understood)."""
    make = _SUMMARIES.get(event.rule)
    if make is not None:
        try:
            return make(event.details)
        except (KeyError, TypeError, ValueError):
            pass
    first = event.message.strip().split("\n", 1)[0]
    return f"{_phase(event)}: {_clip(first, EXCERPT)}"


@dataclass
class _Bar:
    """A weight-shard bar's count, and the quarters it passed."""

    done: int = -1
    quarters: int = 0


class StartProgress:
    """One start's progress (`launched` begins the next): which phase events are worth a
    record, and the STATUS= text, at most one per `status_every` seconds."""

    def __init__(self, status_every: float = STATUS_EVERY) -> None:
        self.status_every = status_every
        self.launched(0.0)

    def launched(self, at: float, role: str | None = None) -> None:
        """A new vLLM was launched at `at` (monotonic); `role`: what its `ready` record says
        instead of an address (a host without an API server)."""
        self.started = at
        self.role = role
        self.starting = True  # until `finished`: phase events are steps of this start
        self.latest: str | None = None  # the newest summary: what STATUS= shows
        self._sent: str | None = None
        self._sent_at = -math.inf
        self._bars: dict[int | None, _Bar] = {}  # each worker's weight-shard bar, by pid
        self.phases: frozenset[str] = frozenset()  # reached (a headless host's readiness)

    def finished(self) -> None:
        """The start is over (READY): later phase events are no steps of it."""
        self.starting = False

    def ready(self, model: str, adapters: Iterable[str], where: str, elapsed_s: float) -> None:
        """READY: the `ready` record, and the start is over (`finished`)."""
        log_ready(model, adapters, where, elapsed_s, self.role)
        self.finished()

    def step(self, event: Event, now: float) -> Step | None:
        """The `progress` record of phase `event` (None: STATUS= news only, such as a shard
        line between two quarters of the bar). Only while `starting`."""
        summary = summarize(event)
        self.latest = summary
        self.phases |= {_phase(event)}
        if event.rule in _STATUS_ONLY:
            return None
        if event.rule == SHARDS_RULE and not self._passes_a_quarter(event):
            return None
        return Step(_phase(event), round(now - self.started, 1), summary)

    def _passes_a_quarter(self, event: Event) -> bool:
        done, total = event.details.get("done"), event.details.get("total")
        if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
            return False
        bar = self._bars.pop(event.pid, None) or _Bar()
        self._bars[event.pid] = bar  # the newest last: the oldest is evicted first
        if len(self._bars) > MAX_BARS:
            del self._bars[next(iter(self._bars))]
        # A count going down after the end is the worker's next bar (another loader). Before
        # the end it is another bar written without a pid (interleaved): counting its
        # quarters again would give records in proportion to the shards.
        if done < bar.done and bar.quarters == 4:
            bar.quarters = 0
        bar.done = done
        quarter = min(4, 4 * done // total)
        passed = bar.quarters < quarter < 4  # 0 % and 100 % have records of their own
        bar.quarters = max(bar.quarters, quarter)
        return passed

    def status_text(self, now: float) -> str | None:
        """STATUS= now: the newest summary and the seconds since launch (None before any)."""
        if self.latest is None:
            return None
        return f"starting vLLM: {self.latest} ({now - self.started:.0f} s)"

    def status_due(self, now: float) -> str | None:
        """`status_text` when it is news and the last one went `status_every` seconds ago."""
        text = self.status_text(now)
        if text is None or text == self._sent or now - self._sent_at < self.status_every:
            return None
        self._sent, self._sent_at = text, now
        return text

    def status_fields(self, now: float) -> tuple[str, ...]:
        """systemd's `STATUS=` of `status_due`, or nothing when none is due."""
        text = self.status_due(now)
        return () if text is None else systemd.status(text)


def log_progress(step: Step, event: Event) -> None:
    log.info(
        "progress",
        phase=step.phase,
        elapsed_s=step.elapsed_s,
        summary=step.summary,
        rule=event.rule,
        vllm_pid=event.pid,
    )


def address(host: str, port: int) -> str:
    """Where vLLM listens, as `host:port` (an IPv6 host bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serving_sentence(model: str, adapters: Sequence[str], where: str) -> str:
    """'serving tiny with adapters alpha, beta on 127.0.0.1:8000'."""
    if not adapters:
        served = "no adapters"
    else:
        names = ", ".join(_clip(name) for name in adapters[:MAX_NAMED])
        more = len(adapters) - MAX_NAMED
        served = f"adapter{'s' if len(adapters) > 1 else ''} {names}"
        served += f" and {more} more" if more > 0 else ""
    return f"serving {_clip(model)} with {served} on {where}"


def log_ready(
    model: str, adapters: Iterable[str], where: str, elapsed_s: float, role: str | None = None
) -> None:
    """The `ready` record: what is served, where, and how long the start took; a host
    without an API server serves nothing here, so its record says its `role` instead."""
    if role is not None:
        summary = f"ready: {role} after {elapsed_s:.1f} s"
        log.info("ready", model=model, role=role, elapsed_s=round(elapsed_s, 1), summary=summary)
        return
    names = list(adapters)
    log.info(
        "ready",
        model=model,
        adapters=names,
        address=where,
        elapsed_s=round(elapsed_s, 1),
        summary=f"{serving_sentence(model, names, where)} after {elapsed_s:.1f} s",
    )
