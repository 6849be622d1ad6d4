"""`lora.verify`: what the effect probe's verdicts do to one run of vLLM.

At readiness (the first check that finds every adapter listed) and after each live load, every
adapter concerned is probed (`effect_probe`). `off` asks nothing. Otherwise:
- an adapter whose request fails (HTTP 4xx/5xx, a timeout, an answer that is not one) fails the
  readiness check (vLLM stays STARTING and is asked again at the next check) or undoes the live
  load: an adapter that cannot generate is not served;
- an adapter with no effect is the event `adapter_no_effect` with the evidence (the log, the
  status's events and `adapter_effects`, a per-adapter metric). `warn`: served anyway.
  `strict`: a live load is undone and refused; at readiness the start is FATAL (exit 78, which
  systemd's unit does not restart): the same files give the same no-op after any number of
  restarts, so loading the model again would only waste minutes per try.

Each run reports its own verdicts: a new run starts with none (`adapter_effects` emptied), a
no-op adapter is reported once per run (a retried readiness check does not repeat it), and an
adapter unloaded or rolled back loses its verdict (`forget`). A reload setting `lora.verify:
off` empties them (reload_taker): no verdict would stand for the adapters served from then on.
The readiness round feeds systemd's watchdog (and extends its timeout) for as long as it may
take: every request at its timeout (`effect_probe.probe_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager

import httpx
import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.metrics import SupervisorMetrics
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.supervise.effect_probe import Effect, EffectProbe, Verdict, probe_timeout
from niodoo_supervisor.supervise.probes import CheckResult, ProbeResult
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.seams import Clock
from niodoo_supervisor.supervise.status_file import StatusBoard

__all__ = ["NO_EFFECT_EVENT", "AdapterEffects"]

log = structlog.get_logger("niodoo_supervisor")

NO_EFFECT_EVENT = "adapter_no_effect"
_HINT = (
    "the adapter serves the base model's output: check that lora_B is trained (PEFT writes "
    "zeros before training) and that its target modules are the model's (no extra prefix such "
    "as `language_model.`, none excluded by lora.target_modules)"
)


# Around a long wait on purpose: systemd's timeout extended by so many seconds, the watchdog
# fed meanwhile (`Reporter.watchdog_fed`).
WatchdogFed = Callable[[float], AbstractAsyncContextManager[None]]


def _unfed(extend: float) -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class AdapterEffects:
    """The verdicts of one run (made when it is launched: the status's verdicts of the run
    before are emptied). `mode` reads `lora.verify` as configured now (a reload changes it
    without a restart); `configured` the names the YAML lists (the metric's only labels)."""

    def __init__(
        self,
        probe: EffectProbe,
        mode: Callable[[], str],
        configured: Callable[[], Collection[str]],
        *,
        status: StatusBoard,
        counters: EventCounters,
        clock: Clock,
        stop_asked: asyncio.Event,
        metrics: SupervisorMetrics | None = None,
        watchdog_fed: WatchdogFed = _unfed,
    ) -> None:
        self.probe = probe
        self.mode = mode
        self.configured = configured
        self.status = status
        self.counters = counters
        self.clock = clock
        self.stop_asked = stop_asked
        self.metrics = metrics
        self.watchdog_fed = watchdog_fed
        self.fatal: str | None = None  # strict: why this start cannot become ready
        self.reported: set[str] = set()  # adapters this run reported without effect
        status.adapter_effects = {}  # the run before's verdicts are not this vLLM's

    @classmethod
    def for_run(
        cls,
        client: httpx.AsyncClient,
        config: Callable[[], Config],
        reporter: Reporter,
        stop_asked: asyncio.Event,
        secrets: Sequence[str] = (),
    ) -> AdapterEffects:
        """Over `client` (the run's `vllm_client`: its URL and API key); `config` gives the
        config as reloaded now."""
        return cls(
            EffectProbe(
                client,
                config().served_name,
                timeout=probe_timeout(config().supervisor.health.timeout),
                secrets=secrets,
                monotonic=reporter.clock.monotonic,
            ),
            lambda: config().lora.verify,
            lambda: [adapter.name for adapter in config().adapters],
            status=reporter.status,
            counters=reporter.counters,
            clock=reporter.clock,
            stop_asked=stop_asked,
            metrics=reporter.metrics,
            watchdog_fed=lambda extend: reporter.watchdog_fed(extend=extend),
        )

    async def at_readiness(self, result: CheckResult, adapters: Sequence[str]) -> CheckResult:
        """A check that found every adapter listed, made a failed one when an adapter fails
        or (strict) has no effect; then `fatal` says why."""
        mode = self.mode()
        if mode == "off" or not adapters or not result.ok:
            return result
        # However long the round takes (a slow first request), it is not a hang.
        async with self.watchdog_fed(self.probe.budget(len(adapters))):
            effects = await self.probe.probe(adapters)
        self.status.adapter_effects = {}
        # A retried readiness check (another adapter failed) reports a no-op adapter once.
        self._record(effects, repeat=False)
        failed = [effect for effect in effects if effect.verdict is Verdict.FAILED]
        no_effect = [effect for effect in effects if effect.verdict is Verdict.NO_EFFECT]
        latency = self.probe.last_duration or 0.0
        if failed:
            reason = "; ".join(f"adapter {e.adapter!r}: {e.reason}" for e in failed)
            timed_out = any(effect.timed_out for effect in failed)
            return _failed_check(result, f"effect probe: {reason}", latency, timed_out=timed_out)
        if no_effect and mode == "strict":
            names = ", ".join(repr(effect.adapter) for effect in no_effect)
            self.fatal = (
                f"adapter(s) {names} have no effect (lora.verify: strict): they serve the base "
                f"model's output; fix or remove them, or set lora.verify: warn"
            )
            return _failed_check(result, self.fatal, latency)
        return result

    async def after_load(self, names: Sequence[str]) -> Effect | None:
        """Adapters just loaded live: the one that must not stay loaded (it failed, or has
        no effect under strict), else None. A stop abandons the probe (failed)."""
        if self.mode() == "off" or not names:
            return None
        task = asyncio.ensure_future(self.probe.probe(names))
        stop = asyncio.ensure_future(self.stop_asked.wait())
        async with self.watchdog_fed(self.probe.budget(len(names))):  # a reload job waits
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            return Effect(names[0], Verdict.FAILED, "the supervisor is stopping")
        effects = task.result()
        self._record(effects)
        for effect in effects:
            if effect.verdict is Verdict.FAILED:
                return effect
            if effect.verdict is Verdict.NO_EFFECT and self.mode() == "strict":
                return dataclasses.replace(
                    effect, reason=f"no effect (lora.verify: strict): {_evidence_text(effect)}"
                )
        return None

    def forget(self, serving: Iterable[str]) -> None:
        """Only the adapters `serving` keep their verdicts (the others were unloaded or
        rolled back); one loaded again is reported again."""
        kept = set(serving)
        self.reported &= kept
        effects = self.status.adapter_effects
        self.status.adapter_effects = {name: e for name, e in effects.items() if name in kept}

    def _record(self, effects: Sequence[Effect], *, repeat: bool = True) -> None:
        """`repeat`: report a no-op adapter this run reported already (a live load of it)."""
        now = self.clock.wall()
        configured = set(self.configured())
        for effect in effects:
            entry: dict[str, object] = {"verdict": effect.verdict.value, "at": now}
            if effect.largest_delta is not None:
                entry["largest_delta"] = round(effect.largest_delta, 6)
            if effect.verdict is not Verdict.EFFECT:
                entry["reason"] = effect.reason
            self.status.adapter_effects[effect.adapter] = entry
            if effect.verdict is Verdict.FAILED:
                log.error(
                    "adapter_effect_probe_failed", adapter=effect.adapter, reason=effect.reason
                )
            elif effect.verdict is Verdict.EFFECT:
                log.info(
                    "adapter_effect",
                    adapter=effect.adapter,
                    largest_delta=effect.largest_delta,
                    summary=f"adapter {effect.adapter} changes the output (largest "
                    f"log-probability change {effect.largest_delta:.3g} nats)",
                )
            elif repeat or effect.adapter not in self.reported:
                self.reported.add(effect.adapter)
                log.warning(
                    NO_EFFECT_EVENT, adapter=effect.adapter, hint=_HINT, **effect.evidence()
                )
                self._count(effect)
                if self.metrics is not None:
                    self.metrics.adapter_no_effect(effect.adapter, configured)

    def _count(self, effect: Effect) -> None:
        """In the status's events, beside vLLM's own."""
        line = f"adapter {effect.adapter!r}: {_evidence_text(effect)}"
        self.counters.add(
            Event(
                rule=NO_EFFECT_EVENT,
                severity=Severity.WARNING,
                action=Action.LOG,
                hint=_HINT,
                message=line,
                process=None,
                pid=None,
                timestamp=None,
                lines=(line,),
                details={"adapter": effect.adapter},
            )
        )


def _evidence_text(effect: Effect) -> str:
    base = effect.base.as_dict() if effect.base else {}
    seen = effect.seen.as_dict() if effect.seen else {}
    return f"{effect.reason}; base model top {base}, adapter top {seen}"


def _failed_check(
    result: CheckResult, reason: str, latency: float, *, timed_out: bool = False
) -> CheckResult:
    """`latency`: the effect round's own time."""
    effect = ProbeResult(False, None, latency, reason, timed_out=timed_out)
    return dataclasses.replace(result, effect=effect)
