"""The main loop: start vLLM, hand the run to its watcher, and act on how it ended with the
restart policy (back off and start again, stop, or give up). Nothing else lives here: one run
is `watcher`, what the world is told is `reporter`, what happens arrives through `dispatch`,
the next start's config (and the taking of a reloaded one) is `reload_taker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager

from prometheus_client import CollectorRegistry

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.readiness_http import ReadinessServer
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.output.records import echo_target
from niodoo_supervisor.output.writer import EchoTarget
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.adapter_effects import AdapterEffects
from niodoo_supervisor.supervise.dispatch import Dispatcher, Reloader
from niodoo_supervisor.supervise.drain import Drain, LoadReader, ready_for_traffic, vllm_load_reader
from niodoo_supervisor.supervise.gpu_memory import GpuMemory
from niodoo_supervisor.supervise.gpu_source import GpuSource
from niodoo_supervisor.supervise.headless_probe import RunView, ready_role, session_size
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    ChildExited,
    LogEvent,
    Outcome,
    OutcomeKind,
    ReloadDone,
    RestartAsked,
    StopAsked,
)
from niodoo_supervisor.supervise.live_adapters import (
    LiveAdapters,
    adapter_api_for,
    answer_without_vllm,
)
from niodoo_supervisor.supervise.metrics_feed import restart_reason, supervisor_metrics
from niodoo_supervisor.supervise.probes import prober_for
from niodoo_supervisor.supervise.reload_taker import NextStart, ReloadTaker
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.restart_planner import NOT_RUNNING, RestartPlanner, answer
from niodoo_supervisor.supervise.restart_policy import RestartPolicy
from niodoo_supervisor.supervise.role_status import RoleMetric, role_object
from niodoo_supervisor.supervise.run import (
    LaunchError,
    VllmLauncher,
    stop_grace,
    stop_takes_at_most,
)
from niodoo_supervisor.supervise.seams import (
    Clock,
    Launcher,
    Prober,
    ProberFactory,
    Run,
    SystemClock,
)
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard
from niodoo_supervisor.supervise.systemd import Notifier
from niodoo_supervisor.supervise.vllm_events import VllmEventLog
from niodoo_supervisor.supervise.watch_settings import WatchSettings
from niodoo_supervisor.supervise.watcher import RunWatcher

__all__ = ["Supervisor"]

_RUNNING = {State.STARTING, State.READY, State.UNHEALTHY}
_SERVING = {State.READY, State.UNHEALTHY}  # vLLM took traffic: a drain announces its stop
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Supervisor:
    def __init__(
        self,
        config: Config,
        plan: LaunchPlan,
        *,
        notifier: Notifier,
        environ: dict[str, str],
        reloader: Reloader | None = None,
        prober_factory: ProberFactory | None = None,
        echo: EchoTarget | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        launcher: Launcher | None = None,
        load_reader: Callable[[Config], AbstractAsyncContextManager[LoadReader]] = vllm_load_reader,
        gpu_source: GpuSource | None = None,
    ) -> None:
        self.next_start = NextStart(config, plan)  # `reloads` replaces it with a reload's
        self.clock = clock or SystemClock()
        if launcher is None:
            echo_to = echo_target(config.supervisor.log.echo, config.supervisor.log.format)
            launcher = VllmLauncher(config, environ, echo if echo is not None else echo_to)
        self.launcher = launcher
        self.prober_factory = prober_factory or self._prober_for
        self.load_reader = load_reader
        self.adapter_api_for = adapter_api_for  # a test seam, like the prober factory
        self.policy = RestartPolicy(config.supervisor.restart, rng)
        counters = EventCounters()
        status = StatusBoard(vllm_version=plan.vllm_version)
        self.metrics_registry = CollectorRegistry()
        self.metrics = supervisor_metrics(
            self.metrics_registry, status, self.clock, lambda: self.config
        )
        self.role_metric = RoleMetric(self.metrics_registry)
        self.vllm_events = VllmEventLog(counters, metrics=self.metrics)
        self.reporter = Reporter(
            notifier, self.clock, config.state_dir, status, counters, metrics=self.metrics
        )
        self.dispatcher = Dispatcher(self.clock, reloader)
        # GPU memory before each start and after each stop (None: NVML is not asked at all).
        self.gpu = GpuMemory(gpu_source, self.reporter, self.clock, environ)
        # The running vLLM's config, and a restart held for the next maintenance window.
        self.planner = RestartPlanner(self.clock, self.reporter, config.maintenance.windows)
        self.reporter.windows = config.maintenance.windows
        self.reloads = ReloadTaker(
            self.next_start,
            planner=self.planner,
            reporter=self.reporter,
            policy=self.policy,
            prober_factory=self.prober_factory,
        )
        self.run_serial = 0  # tags log events: a stopped run's late lines must not steer the next
        self.current: Run | None = None
        self.launched_with = config  # the config `current` was launched with
        self.launched_role = plan.role  # and its role

    @property
    def state(self) -> State:
        return self.reporter.state

    @property
    def config(self) -> Config:
        """The next start's config (a reload's once taken)."""
        return self.next_start.config

    @property
    def plan(self) -> LaunchPlan:
        """The next start's launch plan, the config's."""
        return self.next_start.plan

    async def run(self, early_signals: Callable[[], Iterable[int]] | None = None) -> int:
        """Supervise until stopped; `early_signals` gives what arrived before these handlers
        were installed (it is asked after, so no signal falls between the two)."""
        loop = asyncio.get_running_loop()
        for signum in _HANDLED_SIGNALS:
            loop.add_signal_handler(signum, self.dispatcher.signal, signum)
        for early in early_signals() if early_signals else ():
            self.dispatcher.signal(early)
        readiness = ReadinessServer.listening_on(
            self.config.drain.readiness_listen,
            lambda: ready_for_traffic(self.state, self.reporter.status),
        )
        try:
            if readiness is not None and (refused := await readiness.start()) is not None:
                return self.reporter.fatal(refused, exitcodes.CONFIG)
            return await self._supervise()
        except BaseException:
            # A bug must not leave vLLM (and its GPU memory) behind: stop it, then report.
            if self.current is not None:
                with contextlib.suppress(Exception):
                    await self.current.stop(self.config.supervisor.stop.grace_period)
            raise
        finally:
            for signum in _HANDLED_SIGNALS:
                loop.remove_signal_handler(signum)
            if readiness is not None:
                await readiness.close()
            await self.dispatcher.close()
            self.launcher.close()
            self.gpu.close()

    async def _supervise(self) -> int:
        reloaded = False
        while True:
            if self.dispatcher.stop_asked.is_set():
                return self.reporter.stopped_while_idle("stop requested before the next start")
            now = self.clock.monotonic()
            if not reloaded:  # a reload is a deliberate start, not a crash
                if self.policy.crash_loop(now):
                    limits = self.policy.settings
                    reason = f"crash loop: {limits.max_starts} starts within {limits.window:g}s; last: {self.reporter.status.last_exit}"
                    return self.reporter.fatal(reason, exitcodes.CRASH_LOOP)
                self.policy.record_start(now)
            reloaded = False
            self._show_role()  # also while the start waits for GPU memory
            if (code := await self.gpu.ready(self.config, self.plan, self._backoff)) is not None:
                return code
            run = await self._start()
            if isinstance(run, LaunchError):
                return self.reporter.fatal(str(run), run.exit_code)
            outcome = await self._watch(run)
            served = self.state in _SERVING
            if outcome.kind is OutcomeKind.STOP:
                # STARTING/READY/UNHEALTHY -> STOPPING: asked to stop
                self.reporter.transition(
                    _RUNNING,
                    State.STOPPING,
                    outcome.reason,
                    notify=systemd.stopping("stopping vLLM"),
                )
                await self._stop_run(run, planned=True, served=served)
                # STOPPING -> STOPPED: the whole session of vLLM is gone
                self.reporter.transition({State.STOPPING}, State.STOPPED, "vLLM stopped")
                return exitcodes.OK
            if outcome.kind is OutcomeKind.RELOAD:
                # STARTING/READY/UNHEALTHY -> STOPPING: a planned restart, no crash (no
                # backoff, not counted); STOPPING -> STARTING follows with the new config
                self.reporter.transition(
                    _RUNNING,
                    State.STOPPING,
                    outcome.reason,
                    notify=systemd.status(f"restarting vLLM: {outcome.reason}"),
                    planned_restart=True,
                )
                self.metrics.restarted(restart_reason(outcome))
                await self._stop_run(run, planned=True, served=served)
                reloaded = True
                continue
            await self._stop_run(run)
            self.planner.unplanned_restart(outcome.reason)
            lines = run.tail(self.config.supervisor.log.crash_report_lines)
            self.reporter.crash_report(outcome.reason, outcome.rule, lines)
            if outcome.kind is OutcomeKind.FATAL:
                return self.reporter.fatal(outcome.reason, exitcodes.CONFIG)
            delay = self.policy.next_delay()
            self.reporter.status.restarts += 1
            self.metrics.restarted(restart_reason(outcome))
            # STARTING/READY/UNHEALTHY -> BACKOFF: it failed; try again after a delay
            self.reporter.transition(
                _RUNNING,
                State.BACKOFF,
                outcome.reason,
                notify=systemd.status(f"restarting vLLM in {delay:.0f}s: {outcome.reason}"),
            )
            if await self._backoff(delay):
                return self.reporter.stopped_while_idle("stop requested during backoff")

    async def _start(self) -> Run | LaunchError:
        """Launch vLLM, or say why it cannot even be executed."""
        self.run_serial += 1
        serial = self.run_serial
        try:
            run = await self.launcher.launch(
                self.config,
                self.plan,
                on_event=lambda event: self._on_log_event(serial, event),
                on_exit=lambda pid, code: self.dispatcher.post(ChildExited(pid, code)),
            )
        except LaunchError as exc:
            return exc
        self.current = run
        self._show_role()  # again: NVML has been read by now
        self.gpu.launched(run.pid)
        self.vllm_events.progress.launched(run.started, ready_role(self.config, self.plan.role))
        # The drain (and port) this vLLM was launched with are those its stop must wait for
        # (and read), whatever a reload has set for the next start since.
        self.launched_with = self.config
        self.launched_role = self.plan.role
        self.planner.launched(self.config, self.plan)
        self.reporter.launched(run.pid, self.config.served_name, self.config.adapters)
        return run

    def _show_role(self) -> None:
        """The next start's role in status.json and niodoo_host_role_info."""
        status = self.reporter.status
        status.role = role_object(self.config, self.plan.role, gpus=bool(status.gpus))
        self.role_metric.set(self.plan.role)

    def _prober_for(self, config: Config, api_key: str | None) -> Prober:
        """The prober of the next start's role (a headless one reads the running vLLM)."""
        current = RunView(
            lambda: session_size(self.current.pid if self.current is not None else None),
            lambda: self.vllm_events.progress.phases,
        )
        return prober_for(config, api_key, role=self.plan.role, run=current)

    def _on_log_event(self, serial: int, event: Event) -> None:
        self.vllm_events.record(event, self.clock.monotonic())
        self.dispatcher.post(LogEvent(event, serial))  # the watcher of run `serial` acts on it

    async def _watch(self, run: Run) -> Outcome:
        api = self.adapter_api_for(self.config, self.plan.api_key)
        # Without an API server here, the adapters are served (and verified) on the head.
        effects = (
            AdapterEffects.for_run(
                api.client,
                lambda: self.config,
                self.reporter,
                self.dispatcher.stop_asked,
                self.plan.secrets,
            )
            if self.plan.role.has_api_server
            else None
        )
        watcher = RunWatcher(
            run,
            self.run_serial,
            self.prober_factory(self.config, self.plan.api_key),
            settings=WatchSettings.from_config(self.config, self.plan.role),
            dispatcher=self.dispatcher,
            reporter=self.reporter,
            clock=self.clock,
            apply_reload=self.reloads.while_watching,
            adapters=LiveAdapters(
                self.config,
                self.plan,
                self.reporter.status,
                api,
                self.dispatcher.stop_asked,
                write_status=self.reporter.write_status,
                effects=effects,
                on_served=run.serve_adapters,
            ),
            planner=self.planner,
            progress=self.vllm_events.progress,
        )
        try:
            return await watcher.watch()
        finally:
            if watcher.ready_since is not None:
                self.policy.record_ready_for(self.clock.monotonic() - watcher.ready_since)

    async def _backoff(self, delay: float) -> bool:
        """Wait `delay` seconds, and for a reload under way (its config is the next start's);
        True when a stop was asked meanwhile."""
        deadline = self.clock.monotonic() + delay
        while (remaining := deadline - self.clock.monotonic()) > 0 or self.dispatcher.reloading:
            self.reporter.notify(*systemd.WATCHDOG)  # waiting on purpose is not hanging
            wait = min(remaining, 5.0) if remaining > 0 else 5.0
            incident = await self.dispatcher.next(wait)
            if isinstance(incident, StopAsked):
                return True
            if isinstance(incident, ReloadDone):
                self.reloads.take(incident.result, vllm_running=False)
            elif isinstance(incident, RestartAsked) and incident.now:
                answer(incident.reply, True, "starting vLLM now: the backoff is cut short")
                break
            elif isinstance(incident, RestartAsked):
                answer(incident.reply, True, NOT_RUNNING)
            elif isinstance(incident, AdapterLoadAsked | AdapterUnloadAsked):
                answer_without_vllm(incident, self.config)
        # A reload that ended just as the wait did: its config is the next start's too.
        for done in self.dispatcher.take_reload_results():
            self.reloads.take(done.result, vllm_running=False)
        return False

    async def _stop_run(self, run: Run, *, planned: bool = False, served: bool = False) -> None:
        """End `run`; a `planned` stop (asked for, or a planned restart) is drained first, and
        announced first only when vLLM had `served` (no load balancer sends to a vLLM that
        never was ready). A host without vLLM's API server has no traffic to drain."""
        drain_timeout = self.launched_with.drain_timeout
        grace = stop_grace(self.config.supervisor.stop.grace_period, drain_timeout)
        drained = planned and self.launched_role.has_api_server
        announce = self.config.drain_announce if drained and served else 0.0
        # A stubborn vLLM takes the grace, the group's SIGTERM and SIGKILL and its last lines;
        # 3 s more for the state file and status.
        extend = announce + stop_takes_at_most(grace) + 3.0
        drain = Drain(
            self.reporter,
            self.clock,
            functools.partial(self.load_reader, self.launched_with),
            drain_timeout or 0,
        )
        self.gpu.stopping()
        stop_asked_before = self.dispatcher.stop_asked.is_set()
        async with self.reporter.watchdog_fed(extend=extend):
            if drained:
                with self.dispatcher.stop_from_now() as stop_asked:
                    await drain.announce(announce, stop_asked)
            # vLLM's shutdown lines (EngineDeadError even on a clean SIGTERM) are this stop's,
            # not a crash: flagged before the first signal, until the pump has read the last.
            with self.vllm_events.stopping():
                await (drain.stop(run, grace) if drained else run.stop(grace))
        self.current = None
        self.reporter.status.vllm_pid = None
        # A restart begins only after the memory is back; a stop asked since this stop began
        # (not the one it carries out) ends that wait at once.
        with self.dispatcher.stop_from_now() as stop_asked:
            if self.dispatcher.stop_asked.is_set() and not stop_asked_before:
                stop_asked.set()
            await self.gpu.after_stop(self.config, stop_asked)
