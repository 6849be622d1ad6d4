"""One run of vLLM, from launch to how it ended: readiness (STARTING -> READY), liveness
(READY <-> UNHEALTHY), and the outcome the loop acts on (stop, fatal, failed, reload).

Readiness without lag: once vLLM's log says its HTTP server starts (or /health answers), it
is probed at once and then every `SERVING_PROBE_INTERVAL` until ready, so READY=1 follows
vLLM's first complete answer closely rather than wherever the slower start-up cycle stands.
vLLM lists the adapters of `--lora-modules` as soon as it listens, so at most `FAST_PROBES`
probes are fast (10 s of them); a server still not ready then (an adapter never listed) is
probed at the start-up interval again, not 20 times a second for the rest of `startup_timeout`
(each probe also writes the status file and pings systemd).
From the first answer of /health on, a probe that times out counts as a failure: a server
that hangs right after listening is restarted after `failure_threshold` of them, not after
`startup_stall_timeout`.
A reload that changes only the supervisor's settings retunes the run being watched: its probe
intervals, timeouts and thresholds apply from the next check on (the startup deadline counts
from the launch as before). Adapter changes that apply live (and `adapters load|unload`) go to
`live_adapters`, which also tells the prober what to expect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from niodoo_supervisor.logs.builtin_rules import SERVING_PHASES
from niodoo_supervisor.logs.rule_types import Action, Event
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.adapter_api import LOAD_TIMEOUT
from niodoo_supervisor.supervise.adapter_effects import NO_EFFECT_EVENT
from niodoo_supervisor.supervise.dispatch import Dispatcher
from niodoo_supervisor.supervise.exits import describe_exit
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    ChildExited,
    Incident,
    LogEvent,
    Outcome,
    OutcomeKind,
    ReloadDone,
    ReloadResult,
    RestartAsked,
    StopAsked,
)
from niodoo_supervisor.supervise.live_adapters import LiveAdapters
from niodoo_supervisor.supervise.probes import CheckResult
from niodoo_supervisor.supervise.progress import StartProgress
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.restart_planner import RestartPlanner
from niodoo_supervisor.supervise.seams import Clock, Prober, Run
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.watch_settings import Reloaded, WatchSettings

__all__ = ["FAST_PROBES", "SERVING_PROBE_INTERVAL", "RunWatcher"]

log = structlog.get_logger("niodoo_supervisor")

# Half the 0.1 s ready-lag target: the lag is this interval plus one probe's own time.
SERVING_PROBE_INTERVAL = 0.05
FAST_PROBES = 200
# Seconds systemd's timeout is extended by around a live adapter change (a reload job waits
# for it); the watchdog is fed meanwhile whatever it takes.
ADAPTER_CHANGE_EXTEND = 2 * LOAD_TIMEOUT


class RunWatcher:
    def __init__(
        self,
        run: Run,
        serial: int,
        prober: Prober,
        *,
        settings: WatchSettings,
        dispatcher: Dispatcher,
        reporter: Reporter,
        clock: Clock,
        apply_reload: Callable[[ReloadResult], Reloaded | None],
        adapters: LiveAdapters,
        planner: RestartPlanner,
        progress: StartProgress,
    ) -> None:
        self.run = run
        self.serial = serial  # which run's log events are this one's
        self.prober = prober  # this watcher's own: closed when the watch ends
        self.settings = settings
        self.dispatcher = dispatcher
        self.reporter = reporter
        self.clock = clock
        self.apply_reload = apply_reload
        self.adapters = adapters  # this run's own: closed when the watch ends
        self.planner = planner  # a restart held for a window wakes the watch at its opening
        self.progress = progress  # how far the start is: STATUS= while starting
        self.ready_since: float | None = None
        # When vLLM's log said its HTTP server starts, or /health first answered (monotonic).
        self.server_up_at: float | None = None
        self.fast_probes = 0  # probes made at SERVING_PROBE_INTERVAL since then
        self.answered = False  # /health answered (any status) while starting
        self.timeouts = 0  # probes timed out in a row since then
        self.failures = 0  # failed liveness checks in a row
        self.engine_death: Event | None = None
        self.started = 0.0  # when the watch began (monotonic)
        self.next_check = 0.0
        self.last_check: float | None = None  # when the last check ended

    @property
    def state(self) -> State:
        return self.reporter.state

    async def watch(self) -> Outcome:
        try:
            return await self._watch()
        finally:
            await self.prober.aclose()
            await self.adapters.aclose()

    async def _watch(self) -> Outcome:
        self.started = self.clock.monotonic()
        self.next_check = self.started
        while True:
            restart_at = self.planner.deadline()
            wake = self.next_check if restart_at is None else min(self.next_check, restart_at)
            incident = await self.dispatcher.next(wake - self.clock.monotonic())
            if incident is not None:
                outcome = await self._on_incident(incident)
                if outcome is not None:
                    return outcome
            due = self.planner.due()
            if due is not None:
                return Outcome(OutcomeKind.RELOAD, due)
            now = self.clock.monotonic()
            if now < self.next_check:
                continue
            result = await self._check_unless_stopped()
            if result is None:
                continue  # a stop was asked mid-probe; the queued stop is handled next
            outcome = self._on_check(result, now)
            if outcome is not None:
                return outcome
            self.run.record_processes()

    # --- incidents ----------------------------------------------------------------------------

    async def _on_incident(self, incident: Incident) -> Outcome | None:
        if isinstance(incident, StopAsked):
            return Outcome(OutcomeKind.STOP, incident.reason)
        if isinstance(incident, ReloadDone):
            return await self._on_reload(incident.result)
        if isinstance(incident, RestartAsked):
            restart = self.planner.on_restart_asked(incident, self.state)
            if restart is None:
                return None
            return Outcome(OutcomeKind.RELOAD, restart, cause="operator")
        if isinstance(incident, ChildExited):
            if incident.pid != self.run.pid:
                return None  # the exit of a child stopped earlier
            return await self._exit_outcome(incident.returncode)
        if isinstance(incident, LogEvent) and incident.run == self.serial:
            return self._on_event(incident.event)  # a stopped run's late lines steer nothing
        if isinstance(incident, AdapterLoadAsked | AdapterUnloadAsked):
            # vLLM may take a while per adapter: systemd's watchdog must not take it for a hang.
            async with self.reporter.watchdog_fed(extend=ADAPTER_CHANGE_EXTEND):
                await self.adapters.command(incident, self.state, self.prober)
        return None

    async def _on_reload(self, result: ReloadResult) -> Outcome | None:
        reloaded = self.apply_reload(result)
        if reloaded is None:
            return None  # refused
        if reloaded.restart is not None:
            return Outcome(OutcomeKind.RELOAD, reloaded.restart)
        if reloaded.settle is not None:
            # Even an unchanged YAML brings the served adapters back to it (after a refused
            # live load, or an `adapters unload` of one of its adapters).
            async with self.reporter.watchdog_fed(extend=ADAPTER_CHANGE_EXTEND):
                live = await self.adapters.reloaded(reloaded.adapters, self.prober)
            if not reloaded.settle(live):  # refused: the previous config and settings stay
                if reloaded.prober is not None:
                    await reloaded.prober.aclose()
                return None
        if reloaded.prober is not None:  # the supervisor's settings changed
            self.settings = reloaded.settings
            old, self.prober = self.prober, reloaded.prober  # no probe is in flight now
            await old.aclose()
            self.prober.expect_adapters(list(self.adapters.serving))
            self._retime_next_check()
        return None

    def _retime_next_check(self) -> None:
        fast = self.state is State.STARTING and self.server_up_at is not None
        if self.last_check is not None and not fast and self.engine_death is None:
            # The next check at the new interval (fast probes are 0.05 s apart anyway).
            interval = (
                self.settings.startup_interval
                if self.state is State.STARTING
                else self.settings.interval
            )
            self.next_check = self.last_check + interval

    def _on_event(self, event: Event) -> Outcome | None:
        fatal = self._fatal_outcome(line=event)
        if fatal is not None:
            return fatal
        if event.action is Action.CHECK_NOW:
            self.engine_death = event
            self.next_check = self.clock.monotonic()
        elif event.action is Action.PHASE and self.state is State.STARTING:
            phase = str(event.details.get("phase", event.rule))
            self.reporter.status.phase = phase
            if status := self.progress.status_fields(self.clock.monotonic()):
                self.reporter.notify(*status)
            if phase in SERVING_PHASES and self.server_up_at is None:
                self.server_up_at = self.clock.monotonic()
                self.next_check = self.server_up_at  # probe at once
        return None

    async def _exit_outcome(self, returncode: int) -> Outcome:
        how = describe_exit(returncode)
        self.reporter.status.last_exit = how
        log.warning("vllm_exited", vllm_pid=self.run.pid, how=how, state=self.state.value)
        await self.run.drain(2.0)  # the line that explains the exit may still be in the pipe
        for event in self.dispatcher.take_log_events(self.serial):
            fatal = self._fatal_outcome(line=event)
            if fatal is not None:
                return fatal
        fatal = self._fatal_outcome(returncode=returncode)
        if fatal is not None:
            return fatal
        if returncode == 0:
            return Outcome(
                OutcomeKind.FAILED,
                f"vLLM {how} without being asked to stop (vLLM exits 0 when its engine dies)",
            )
        return Outcome(OutcomeKind.FAILED, f"vLLM {how}")

    def _fatal_outcome(
        self, *, line: Event | None = None, returncode: int | None = None
    ) -> Outcome | None:
        """The one place FATAL is decided: while starting, a log line naming a deterministic
        start failure (the pump no longer calls a line fatal once vLLM serves), or an argparse
        error (exit 2)."""
        if self.state is not State.STARTING:
            return None
        if line is not None and line.action is Action.FATAL:
            return Outcome(OutcomeKind.FATAL, f"{line.rule}: {line.message.strip()}", line.rule)
        if returncode == 2:
            return Outcome(
                OutcomeKind.FATAL,
                f"vLLM {describe_exit(returncode)} while starting: a command-line (argparse) "
                f"error; {self.run.last_line()}",
            )
        return None

    # --- checks -------------------------------------------------------------------------------

    async def _check_unless_stopped(self) -> CheckResult | None:
        """One check, abandoned (None) when a stop is asked meanwhile: a hung vLLM must not
        hold up a stop for two probe timeouts."""
        check = asyncio.ensure_future(self._check())
        stop = asyncio.ensure_future(self.dispatcher.stop_asked.wait())
        await asyncio.wait({check, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if check.done():
            return check.result()
        check.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await check
        return None

    async def _check(self) -> CheckResult:
        result = await self.prober.check()
        if self.state is State.STARTING and self.adapters.effects is not None:
            # lora.verify: listed is not enough; each adapter must change the output
            result = await self.adapters.effects.at_readiness(result, list(self.adapters.serving))
        return result

    def _on_check(self, result: CheckResult, now: float) -> Outcome | None:
        self.last_check = self.clock.monotonic()
        if result.health.status is not None:
            # vLLM answers HTTP, so clients can reach it: its later fatal lines may be theirs.
            self.run.mark_serving()
        self.reporter.note_check(result, self.run.dropped_bytes)
        if self.state is State.STARTING:
            outcome = self._starting_check(result, now)
            interval = self.settings.startup_interval
            if self.server_up_at is not None and self.fast_probes < FAST_PROBES:
                self.fast_probes += 1
                interval = min(interval, SERVING_PROBE_INTERVAL)
            self.engine_death = None  # a death seen while starting does not shorten later checks
        else:
            outcome = self._liveness_check(result)
            interval = self.settings.interval
        self.next_check = self.clock.monotonic() + interval
        return outcome

    def _starting_check(self, result: CheckResult, now: float) -> Outcome | None:
        settings = self.settings
        deadline = self.started + settings.startup_timeout
        if self.adapters.effects is not None and self.adapters.effects.fatal is not None:
            return Outcome(OutcomeKind.FATAL, self.adapters.effects.fatal, NO_EFFECT_EVENT)
        if result.ok:
            self.ready_since = now
            took = self.clock.monotonic() - self.run.started  # the probes' time included
            # STARTING -> READY: /health 200 and /v1/models lists the model and every adapter
            self.reporter.transition(
                {State.STARTING},
                State.READY,
                f"ready after {took:.1f}s",
                notify=(
                    *systemd.ready(self.reporter.serving_text(settings.ready_text)),
                    *systemd.WATCHDOG,
                ),
            )
            self.progress.ready(settings.model, self.adapters.serving, settings.address, took)
            return None
        if result.health.status is not None:
            self.answered = True
            if self.server_up_at is None:
                self.server_up_at = now
        if self.answered and result.timed_out:  # /health's time-out or /v1/models'
            self.timeouts += 1
            if self.timeouts >= settings.failure_threshold:
                return Outcome(
                    OutcomeKind.FAILED,
                    f"{self.timeouts} probes in a row timed out after vLLM had answered "
                    f"/health while starting: {result.reason}",
                    cause="hung",
                )
        else:
            self.timeouts = 0  # in a row: a probe that did not time out ends the count
        if now >= deadline:
            return Outcome(
                OutcomeKind.FAILED,
                f"not ready within startup_timeout ({settings.startup_timeout:g}s): {result.reason}",
                cause="start_timeout",
            )
        silent = self.run.silent_for(now)
        if silent >= settings.stall_timeout:
            return Outcome(
                OutcomeKind.FAILED,
                f"vLLM wrote nothing for {silent:.0f}s while starting "
                f"(startup_stall_timeout {settings.stall_timeout:g}s)",
                cause="hung",
            )
        # Still making progress: keep systemd's start timeout ahead of us (and STATUS= counting).
        self.reporter.notify(
            *systemd.extend_timeout(settings.stall_timeout + settings.startup_interval * 2),
            *systemd.WATCHDOG,
            *self.progress.status_fields(now),
        )
        self.reporter.write_status()
        return None

    def _liveness_check(self, result: CheckResult) -> Outcome | None:
        threshold = self.settings.failure_threshold
        engine_death = self.engine_death
        if result.ok:
            self.failures, self.engine_death = 0, None
        else:
            self.failures += 1
        self.reporter.status.consecutive_failures = self.failures
        if result.ok:
            serving = self.planner.serving_text(self.settings.ready_text)
            if self.state is State.UNHEALTHY:
                # UNHEALTHY -> READY: checks pass again
                self.reporter.transition(
                    {State.UNHEALTHY},
                    State.READY,
                    "checks pass again",
                    notify=systemd.status(self.reporter.serving_text(serving)),
                )
            self.reporter.refresh_serving_text(serving)  # request mistakes counted since
            self.reporter.notify(*systemd.WATCHDOG)
            self.reporter.write_status()
            return None
        # An engine-death line may be forged by a client (a request id with a newline in it),
        # so it only skips the threshold when vLLM itself confirms: /health answers 503.
        if engine_death is not None and result.health.status == 503:
            return Outcome(
                OutcomeKind.FAILED,
                f"engine died ({engine_death.message.strip()}); {result.reason}",
                engine_death.rule,
            )
        if self.failures >= threshold:
            return Outcome(
                OutcomeKind.FAILED,
                f"{self.failures} failed checks in a row: {result.reason}",
                cause="unhealthy",
            )
        if self.state is State.READY:
            # READY -> UNHEALTHY: a check failed, below the threshold
            self.reporter.transition(
                {State.READY},
                State.UNHEALTHY,
                f"check failed ({self.failures}/{threshold}): {result.reason}",
                notify=systemd.status(f"unhealthy ({self.failures}/{threshold}): {result.reason}"),
            )
        return None
