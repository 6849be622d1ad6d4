"""The one main loop: start vLLM, wait until it is ready, keep checking it, restart it with
judgement, stop it without leaving anything behind.

Everything that happens reaches the loop as an incident on one queue: the child's exit, a log
event, a signal. Signal handlers only enqueue (gunicorn #3198 is the lesson). Probes run on the
loop's own schedule. Each state change is asserted, labelled and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import BinaryIO

import structlog

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event
from niodoo_supervisor.logs.sinks import RotatingLogFile
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.event_limit import EventLogLimiter
from niodoo_supervisor.supervise.exits import describe_exit
from niodoo_supervisor.supervise.incidents import (
    ChildExited,
    Incident,
    LogEvent,
    Outcome,
    ReloadResult,
    SignalReceived,
)
from niodoo_supervisor.supervise.probes import CheckResult, HttpProber, prober_for
from niodoo_supervisor.supervise.restart_policy import RestartPolicy, RestartSettings
from niodoo_supervisor.supervise.run import LaunchError, VllmRun
from niodoo_supervisor.supervise.states import ALLOWED, State
from niodoo_supervisor.supervise.status_file import CrashReport, StatusBoard
from niodoo_supervisor.supervise.systemd import Notifier

__all__ = ["ProberFactory", "Reloader", "Supervisor"]

log = structlog.get_logger("niodoo_supervisor")

_RUNNING = {State.STARTING, State.READY, State.UNHEALTHY}
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


Reloader = Callable[[], Awaitable[ReloadResult]]
ProberFactory = Callable[[Config, str | None], HttpProber]


def _settings(config: Config) -> RestartSettings:
    names = (spec.name for spec in dataclasses.fields(RestartSettings))
    return RestartSettings(**{name: config[f"supervisor.restart.{name}"] for name in names})


class Supervisor:
    def __init__(
        self,
        config: Config,
        launch: LaunchPlan,
        *,
        api_key: str | None,
        notifier: Notifier,
        environ: dict[str, str],
        reloader: Reloader | None = None,
        prober_factory: ProberFactory | None = None,
        echo: BinaryIO | None = None,
        rng: random.Random | None = None,
        vllm_version: str | None = None,
    ) -> None:
        self.config = config
        self.launch = launch
        self.api_key = api_key
        self.notifier = notifier
        self.environ = environ
        self.reloader = reloader
        self.prober_factory = prober_factory or prober_for
        self.echo = (
            echo
            if echo is not None
            else (sys.stdout.buffer if config["supervisor.log.echo"] else None)
        )
        self.policy = RestartPolicy(_settings(config), rng)
        self.state = State.STOPPED
        self.incidents: asyncio.Queue[Incident] = asyncio.Queue()
        self.counters = EventCounters()
        self.status = StatusBoard(vllm_version=vllm_version)
        self.stop_asked = asyncio.Event()
        self.event_limiter = EventLogLimiter()
        self.run_serial = 0  # tags log events: a stopped run's late lines must not steer the next
        self.ready_since: float | None = None
        self.fatal_event: Event | None = None
        self.current: VllmRun | None = None
        self.log_file = RotatingLogFile(
            config.log_path,
            config["supervisor.log.max_bytes"],
            config["supervisor.log.backup_count"],
        )

    # --- the state machine --------------------------------------------------------------------

    def transition(self, expected: set[State], new: State, reason: str) -> None:
        old = self.state
        assert old in expected, f"{old.value} -> {new.value} from an unexpected state"
        assert new in ALLOWED[old], f"{old.value} -> {new.value} is not a transition"
        self.state = new
        log.info("state_changed", old=old.value, new=new.value, reason=reason)
        self.status.state, self.status.since, self.status.reason = new.value, time.time(), reason
        self.status.write(self.config.state_dir)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, early_signals: Callable[[], Iterable[int]] | None = None) -> int:
        """Supervise until stopped; `early_signals` gives what arrived before these handlers
        were installed (it is asked after, so no signal falls between the two)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal_received, signum)
        for early in early_signals() if early_signals else ():
            self._on_signal_received(early)
        try:
            return await self._supervise()
        except BaseException:
            # A bug must not leave vLLM (and its GPU memory) behind: stop it, then report.
            if self.current is not None:
                with contextlib.suppress(Exception):
                    await self.current.stop(self.config["supervisor.stop.grace_period"])
            raise
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.log_file.close()

    async def _supervise(self) -> int:
        reloaded = False
        while True:
            if self._stop_pending():
                return self._stopped_while_idle("stop requested before the next start")
            now = time.monotonic()
            if not reloaded:  # a reload is a deliberate start, not a crash
                if self.policy.crash_loop(now):
                    settings = self.policy.settings
                    reason = f"crash loop: {settings.max_starts} starts within {settings.window:g}s; last: {self.status.last_exit}"
                    return self._fatal(reason, exitcodes.CRASH_LOOP)
                self.policy.record_start(now)
            reloaded = False
            child = await self._start()
            if isinstance(child, LaunchError):
                return self._fatal(str(child), child.exit_code)
            prober = self.prober_factory(self.config, self.api_key)
            try:
                outcome = await self._watch(child, prober)
            finally:
                await prober.aclose()
            if self.ready_since is not None:
                self.policy.record_ready_for(time.monotonic() - self.ready_since)
                self.ready_since = None
            if outcome.kind == "stop":
                # STARTING/READY/UNHEALTHY -> STOPPING: asked to stop
                self.transition(_RUNNING, State.STOPPING, outcome.reason)
                self.notifier.send(*systemd.stopping("stopping vLLM"))
                await self._stop_child(child)
                # STOPPING -> STOPPED: the whole session of vLLM is gone
                self.transition({State.STOPPING}, State.STOPPED, "vLLM stopped")
                return exitcodes.OK
            await self._stop_child(child)
            if outcome.kind == "fatal":
                self._report_crash(outcome, child)
                return self._fatal(outcome.reason, exitcodes.CONFIG)
            if outcome.kind == "reload":
                # STARTING/READY/UNHEALTHY -> BACKOFF, no delay: the new config starts at once
                self.transition(_RUNNING, State.BACKOFF, outcome.reason)
                reloaded = True
                continue
            self._report_crash(outcome, child)
            delay = self.policy.next_delay()
            self.status.restarts += 1
            # STARTING/READY/UNHEALTHY -> BACKOFF: it failed; try again after a delay
            self.transition(_RUNNING, State.BACKOFF, outcome.reason)
            self.notifier.send(
                *systemd.status(f"restarting vLLM in {delay:.0f}s: {outcome.reason}")
            )
            if await self._backoff(delay):
                return self._stopped_while_idle("stop requested during backoff")

    async def _next_incident(self, timeout: float) -> Incident | None:
        """The next incident, waiting at most `timeout` seconds. Queued ones come first even
        when the time is up: wait_for with no time left would never look at the queue."""
        if not self.incidents.empty():
            return self.incidents.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self.incidents.get(), timeout=timeout)
        except asyncio.TimeoutError:
            return None

    def _on_signal_received(self, signum: int) -> None:
        # Only record it (handlers must not do work); a stop also cuts short a probe in flight.
        self.incidents.put_nowait(SignalReceived(signum))
        if signum in _STOP_SIGNALS:
            self.stop_asked.set()

    async def _check_unless_stopped(self, prober: HttpProber) -> CheckResult | None:
        """One check, abandoned (None) when a stop is asked meanwhile: a hung vLLM must not
        hold up a stop for two probe timeouts."""
        check = asyncio.ensure_future(prober.check())
        stop = asyncio.ensure_future(self.stop_asked.wait())
        await asyncio.wait({check, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if check.done():
            return check.result()
        check.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await check
        return None

    def _stop_pending(self) -> bool:
        """Whether a SIGTERM/SIGINT is queued (handled before spending minutes on a start)."""
        pending = []
        stop = False
        while not self.incidents.empty():
            incident = self.incidents.get_nowait()
            if isinstance(incident, SignalReceived) and incident.signum in _STOP_SIGNALS:
                stop = True
            elif isinstance(incident, SignalReceived):
                pending.append(incident)  # keep a SIGHUP for the loop
        for incident in pending:
            self.incidents.put_nowait(incident)
        return stop

    def _stopped_while_idle(self, reason: str) -> int:
        self.notifier.send(*systemd.stopping("stopping: nothing running"))
        # BACKOFF/STOPPED -> STOPPING -> STOPPED: no vLLM is running, nothing to end
        self.transition({State.BACKOFF, State.STOPPED}, State.STOPPING, reason)
        self.transition({State.STOPPING}, State.STOPPED, "nothing running")
        return exitcodes.OK

    def _fatal(self, reason: str, code: int) -> int:
        # any state but FATAL -> FATAL: retrying cannot help, or the crash-loop limit is reached
        self.transition({State.STOPPED, State.BACKOFF} | _RUNNING, State.FATAL, reason)
        self.notifier.send(*systemd.status(f"FATAL: {reason}"))
        log.error("fatal", reason=reason, exit_code=code)
        return code

    async def _backoff(self, delay: float) -> bool:
        """Wait `delay` seconds; True when a stop was asked meanwhile. A SIGHUP is applied at
        once, so the next start uses the new config."""
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            self.notifier.send(*systemd.WATCHDOG)  # waiting on purpose is not hanging
            try:
                incident = await asyncio.wait_for(self.incidents.get(), timeout=min(remaining, 5.0))
            except asyncio.TimeoutError:
                continue
            if isinstance(incident, SignalReceived) and incident.signum in _STOP_SIGNALS:
                return True
            if isinstance(incident, SignalReceived) and incident.signum == signal.SIGHUP:
                await self._reload()
        return False

    # --- starting -----------------------------------------------------------------------------

    async def _start(self) -> VllmRun | LaunchError:
        """Launch vLLM, or say why it cannot even be executed."""
        self.fatal_event = None
        self.run_serial += 1
        serial = self.run_serial
        try:
            run = await VllmRun.launch(
                self.config,
                self.launch,
                self.environ,
                log_file=self.log_file,
                echo=self.echo,
                on_event=lambda event: self._on_log_event(serial, event),
                on_exit=lambda pid, code: self.incidents.put_nowait(ChildExited(pid, code)),
            )
        except LaunchError as exc:
            return exc
        self.current = run
        self.status.starts += 1
        self.status.vllm_pid = run.pid
        self.status.served_model = self.config.served_name
        self.status.adapters = [adapter.name for adapter in self.config.adapters]
        # STOPPED/BACKOFF -> STARTING: vLLM launched
        self.transition(
            {State.STOPPED, State.BACKOFF}, State.STARTING, f"launched vLLM pid {run.pid}"
        )
        self.notifier.send(*systemd.status(f"starting vLLM (pid {run.pid})"))
        return run

    def _on_log_event(self, serial: int, event: Event) -> None:
        self.counters.add(event)
        admitted, suppressed = self.event_limiter.admit(event.rule, time.monotonic())
        if suppressed:
            log.warning(
                "vllm_events_suppressed",
                rule=event.rule,
                suppressed=suppressed,
                reason="rate limit; the status counts them all",
            )
        if admitted:
            self._log_event(event)
        if serial != self.run_serial:
            return  # a stopped run's last lines: counted and logged, but they steer nothing
        if (
            event.action is Action.FATAL
            and self.state is State.STARTING
            and self.fatal_event is None
        ):
            self.fatal_event = event
        self.incidents.put_nowait(LogEvent(event))

    def _log_event(self, event: Event) -> None:
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

    # --- watching -----------------------------------------------------------------------------

    async def _watch(self, child: VllmRun, prober: HttpProber) -> Outcome:
        config = self.config
        started = time.monotonic()
        startup_deadline = started + config["supervisor.startup_timeout"]
        next_check = started
        failures = 0
        engine_death: Event | None = None
        while True:
            incident = await self._next_incident(next_check - time.monotonic())
            if isinstance(incident, ChildExited):
                if incident.pid != child.pid:
                    continue  # the exit of a child stopped earlier
                return await self._exit_outcome(child, incident.returncode)
            if isinstance(incident, SignalReceived):
                outcome = await self._on_signal(incident.signum)
                if outcome is not None:
                    return outcome
                continue
            if isinstance(incident, LogEvent):
                event = incident.event
                if self.fatal_event is not None and self.state is State.STARTING:
                    return self._fatal_outcome(self.fatal_event)
                if event.action is Action.CHECK_NOW:
                    engine_death = event
                    next_check = time.monotonic()
                elif event.action is Action.PHASE and self.state is State.STARTING:
                    self.status.phase = str(event.details.get("phase", event.rule))
                    self.notifier.send(*systemd.status(f"starting vLLM: {self.status.phase}"))
                if time.monotonic() < next_check:
                    continue
            now = time.monotonic()
            if now < next_check:
                continue
            result = await self._check_unless_stopped(prober)
            if result is None:
                continue  # a stop was asked mid-probe; the queued signal is handled next
            self._note_check(result)
            if self.state is State.STARTING:
                outcome = self._starting_check(child, result, now, startup_deadline)
                next_check = time.monotonic() + config["supervisor.health.startup_interval"]
                engine_death = None  # a death seen while starting does not shorten later checks
            else:
                if result.ok:
                    failures, engine_death = 0, None
                else:
                    failures += 1
                outcome = self._liveness_check(result, failures, engine_death)
                next_check = time.monotonic() + config["supervisor.health.interval"]
            if outcome is not None:
                return outcome
            child.record_processes()

    def _note_check(self, result: CheckResult) -> None:
        if result.health.status is not None and self.current is not None:
            # vLLM answers HTTP, so clients can reach it: its later fatal lines may be theirs.
            self.current.pump.mark_serving()
        self.status.last_check = {
            "at": time.time(),
            "ok": result.ok,
            "reason": result.reason,
            "health_status": result.health.status,
            "latency_s": round(
                result.health.latency + (result.models.latency if result.models else 0.0), 4
            ),
        }
        self.status.events = self.counters.as_dict()
        self.status.notify_dropped = self.notifier.dropped
        if self.current is not None:
            self.status.log_dropped_bytes = self.current.pump.stats.dropped_bytes

    def _starting_check(
        self, child: VllmRun, result: CheckResult, now: float, deadline: float
    ) -> Outcome | None:
        if result.ok:
            self.ready_since = now
            # STARTING -> READY: /health 200 and /v1/models lists the model and every adapter
            self.transition(
                {State.STARTING}, State.READY, f"ready after {now - child.child.started:.1f}s"
            )
            self.notifier.send(*systemd.ready(self._ready_text()), *systemd.WATCHDOG)
            return None
        if now >= deadline:
            return Outcome(
                "failed",
                f"not ready within startup_timeout ({self.config['supervisor.startup_timeout']:g}s): {result.reason}",
            )
        silent = child.silent_for(now)
        stall = self.config["supervisor.startup_stall_timeout"]
        if silent >= stall:
            return Outcome(
                "failed",
                f"vLLM wrote nothing for {silent:.0f}s while starting (startup_stall_timeout {stall:g}s)",
            )
        # Still making progress: keep systemd's start timeout ahead of us.
        self.notifier.send(
            *systemd.extend_timeout(stall + self.config["supervisor.health.startup_interval"] * 2),
            *systemd.WATCHDOG,
        )
        self.status.write(self.config.state_dir)
        return None

    def _liveness_check(
        self, result: CheckResult, failures: int, engine_death: Event | None
    ) -> Outcome | None:
        threshold = self.config["supervisor.health.failure_threshold"]
        self.status.consecutive_failures = failures
        if result.ok:
            if self.state is State.UNHEALTHY:
                # UNHEALTHY -> READY: checks pass again
                self.transition({State.UNHEALTHY}, State.READY, "checks pass again")
                self.notifier.send(*systemd.status(self._ready_text()))
            self.notifier.send(*systemd.WATCHDOG)
            self.status.write(self.config.state_dir)
            return None
        # An engine-death line may be forged by a client (a request id with a newline in it),
        # so it only skips the threshold when vLLM itself confirms: /health answers 503.
        if engine_death is not None and result.health.status == 503:
            return Outcome(
                "failed",
                f"engine died ({engine_death.message.strip()}); {result.reason}",
                engine_death.rule,
            )
        if failures >= threshold:
            return Outcome("failed", f"{failures} failed checks in a row: {result.reason}")
        if self.state is State.READY:
            # READY -> UNHEALTHY: a check failed, below the threshold
            self.transition(
                {State.READY},
                State.UNHEALTHY,
                f"check failed ({failures}/{threshold}): {result.reason}",
            )
            self.notifier.send(
                *systemd.status(f"unhealthy ({failures}/{threshold}): {result.reason}")
            )
        return None

    def _ready_text(self) -> str:
        adapters = len(self.config.adapters)
        return f"ready: serving {self.config.served_name} with {adapters} adapter(s) on port {self.config.port}"

    async def _exit_outcome(self, child: VllmRun, returncode: int) -> Outcome:
        how = describe_exit(returncode)
        self.status.last_exit = how
        log.warning("vllm_exited", vllm_pid=child.pid, how=how, state=self.state.value)
        await child.drain(2.0)  # the line that explains the exit may still be in the pipe
        if self.fatal_event is not None and self.state is State.STARTING:
            return self._fatal_outcome(self.fatal_event)
        if returncode == 2 and self.state is State.STARTING:
            return Outcome(
                "fatal",
                f"vLLM {how} while starting: a command-line (argparse) error; {child.last_line()}",
            )
        if returncode == 0:
            return Outcome(
                "failed",
                f"vLLM {how} without being asked to stop (vLLM exits 0 when its engine dies)",
            )
        return Outcome("failed", f"vLLM {how}")

    def _fatal_outcome(self, event: Event) -> Outcome:
        return Outcome("fatal", f"{event.rule}: {event.message.strip()}", event.rule)

    async def _on_signal(self, signum: int) -> Outcome | None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            return Outcome("stop", f"{signal.Signals(signum).name} received")
        if signum == signal.SIGHUP:
            return await self._reload()
        return None

    async def _reload(self) -> Outcome | None:
        if self.reloader is None:
            return None
        log.info("reload_requested")
        try:
            result = await self.reloader()
        except Exception as exc:
            result = ReloadResult(None, None, [f"reload failed: {type(exc).__name__}: {exc}"])
        if result.config is None or result.launch is None:
            for error in result.errors:
                log.error("reload_refused", problem=error)
            self.notifier.send(
                *systemd.status(
                    f"reload refused ({len(result.errors)} problem(s)); still running the old config"
                )
            )
            return None
        self.notifier.send(*systemd.reloading("restarting vLLM with the new config"))
        self.config, self.launch, self.api_key = result.config, result.launch, result.api_key
        self.policy.settings = _settings(result.config)
        return Outcome("reload", "config reloaded (SIGHUP)")

    # --- stopping -----------------------------------------------------------------------------

    async def _stop_child(self, child: VllmRun) -> None:
        grace = self.config["supervisor.stop.grace_period"]
        # Ending a stubborn vLLM takes up to the grace period plus the SIGKILL check: keep
        # systemd's stop timeout ahead of it, and keep feeding the watchdog meanwhile.
        self.notifier.send(*systemd.extend_timeout(grace + 20.0), *systemd.WATCHDOG)
        keepalive = asyncio.get_running_loop().create_task(self._feed_watchdog())
        try:
            await child.stop(grace)
        finally:
            keepalive.cancel()
        self.current = None
        self.status.vllm_pid = None
        self.status.events = self.counters.as_dict()

    async def _feed_watchdog(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            self.notifier.send(*systemd.WATCHDOG)

    def _report_crash(self, outcome: Outcome, child: VllmRun) -> None:
        count = self.config["supervisor.log.crash_report_lines"]
        lines = child.tail(count)
        self.status.last_crash = CrashReport(time.time(), outcome.reason, outcome.rule, lines)
        log.error(
            "crash_report", reason=outcome.reason, rule=outcome.rule, last_lines="\n".join(lines)
        )
