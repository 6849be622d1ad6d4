"""`niodoo-supervisor run`: everything between the command line and the main loop.

Order matters: signal handlers first (a SIGHUP during the start must not end the daemon), then
the config, then the state folder is checked and locked (one supervisor per folder), then
leftovers of a previous supervisor are ended (they hold the port and GPU memory), then
preflight refuses what cannot work, then the loop starts. A SIGTERM before the loop ends the
start between two steps; a SIGHUP re-reads the config before vLLM's first start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.config.problems import Problem
from niodoo_supervisor.control.metrics_http import metrics_endpoint
from niodoo_supervisor.control.server import ControlSettings
from niodoo_supervisor.files.statedir import StateDirError, StateLock, prepare
from niodoo_supervisor.launch.plan import LaunchPlan, PlanError, plan_launch
from niodoo_supervisor.launch.preflight import PreflightOptions, preflight
from niodoo_supervisor.launch.render import redacted_argv
from niodoo_supervisor.output.records import configure_logging
from niodoo_supervisor.supervise.control_target import supervise_with_control
from niodoo_supervisor.supervise.early_signals import StartupSignals
from niodoo_supervisor.supervise.gpu_source import ThreadedNvml
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.leftovers import end_leftovers
from niodoo_supervisor.supervise.loop import Supervisor
from niodoo_supervisor.supervise.systemd import SystemdNotifier

__all__ = ["run_daemon"]

log = structlog.get_logger("niodoo_supervisor")


def run_daemon(config_path: Path, *, check_flags: bool = True) -> int:
    signals = StartupSignals()
    signals.install()
    configure_logging()  # `auto` until the config says otherwise
    environ = dict(os.environ)
    config, problems = load_config(config_path, environ)
    if config is not None:
        configure_logging(config.supervisor.log.format)
    for problem in problems:
        _log_problem(problem.format(), problem.is_error)
    if config is None:
        log.error(
            "config_refused", config=str(config_path), errors=sum(p.is_error for p in problems)
        )
        return exitcodes.CONFIG
    try:
        prepare(config.state_dir, config.log_path)
        lock = StateLock.acquire(config.state_dir)
    except StateDirError as exc:
        log.error("state_dir_refused", problem=str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    try:
        return _run_locked(config_path, config, environ, signals, check_flags)
    finally:
        lock.release()


def _run_locked(
    config_path: Path,
    config: Config,
    environ: dict[str, str],
    signals: StartupSignals,
    check_flags: bool,
) -> int:
    ended = asyncio.run(end_leftovers(config))
    if (stop := signals.stop_signal()) is not None:
        return _stopped_before_start(stop)
    plan, problems = _checked_plan(config, environ, PreflightOptions(check_flags=check_flags))
    for problem in problems:
        _log_problem(problem.format(), problem.is_error)
    if plan is None:
        log.error(
            "preflight_refused",
            errors=sum(p.is_error for p in problems),
            hint="niodoo-supervisor check -c CONFIG shows the same",
        )
        return exitcodes.CONFIG
    while signals.take_reload():
        config, plan = _reload_before_start(config, plan, config_path, environ, check_flags)
    if (stop := signals.stop_signal()) is not None:
        return _stopped_before_start(stop)
    notifier = SystemdNotifier()
    supervisor = Supervisor(
        config,
        plan,
        notifier=notifier,
        environ=environ,
        reloader=lambda: _reload(config_path, environ),
        gpu_source=ThreadedNvml(),
    )
    supervisor.gpu.note_ours(ended)  # their memory may be freed late: not a stranger's
    log.info(
        "starting",
        config=str(config_path),
        vllm_log=str(config.log_path),
        argv=" ".join(redacted_argv(plan)),
    )
    try:
        return asyncio.run(_supervised(supervisor, config, signals.pending))
    finally:
        notifier.close()


async def _supervised(
    supervisor: Supervisor, config: Config, pending: Callable[[], Iterable[int]]
) -> int:
    control = ControlSettings.from_config(config)
    async with metrics_endpoint(config.supervisor.metrics.listen, supervisor.metrics_registry):
        return await supervise_with_control(supervisor, control, pending)


def _stopped_before_start(signum: signal.Signals) -> int:
    log.info("stopped_before_start", signal=signum.name, reason="asked to stop; vLLM not started")
    return exitcodes.OK


def _reload_before_start(
    config: Config, plan: LaunchPlan, config_path: Path, environ: dict[str, str], check_flags: bool
) -> tuple[Config, LaunchPlan]:
    """A SIGHUP during the start: read the config again now rather than restart vLLM later.
    A config with errors is refused and the one already checked is kept, as on any reload."""
    log.info("reload_requested", when="before vLLM's first start")
    reloaded = _load_checked(config_path, environ, PreflightOptions(check_flags=check_flags))
    if reloaded.config is None or reloaded.plan is None:
        for error in reloaded.errors:
            log.error("reload_refused", problem=error)
        return config, plan
    return reloaded.config, reloaded.plan


def _log_problem(text: str, is_error: bool) -> None:
    (log.error if is_error else log.warning)("config_problem", problem=text)


async def _reload(config_path: Path, environ: dict[str, str]) -> ReloadResult:
    """The reloaded config and its plan, worked out in a daemon thread: a preflight can take
    minutes (a cold flag cache), and a stop must neither wait for it nor be held at exit by it,
    as `asyncio.to_thread`'s executor would be when `asyncio.run` shuts it down."""
    # vLLM holds the port while it runs: the port is not checked on a reload.
    options = PreflightOptions(check_port=False)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ReloadResult] = loop.create_future()

    def deliver(result: ReloadResult) -> None:
        if not done.done():  # done: the reload was given up (a stop)
            done.set_result(result)

    def fail(error: Exception) -> None:
        if not done.done():
            done.set_exception(error)  # the dispatcher reports it as a refused reload

    def work() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            try:
                result = _load_checked(config_path, environ, options)
            except Exception as exc:
                loop.call_soon_threadsafe(fail, exc)
            else:
                loop.call_soon_threadsafe(deliver, result)

    threading.Thread(target=work, name="niodoo-reload", daemon=True).start()
    return await done


def _load_checked(
    config_path: Path, environ: dict[str, str], options: PreflightOptions
) -> ReloadResult:
    config, problems = load_config(config_path, environ)
    errors = [problem.format() for problem in problems if problem.is_error]
    if config is None:
        return ReloadResult(None, None, errors)
    plan, problems = _checked_plan(config, environ, options)
    if plan is None:
        return ReloadResult(None, None, errors + [p.format() for p in problems if p.is_error])
    return ReloadResult(config, plan)


def _checked_plan(
    config: Config, environ: dict[str, str], options: PreflightOptions
) -> tuple[LaunchPlan | None, list[Problem]]:
    """Preflight, then the plan (None when either refuses): the start and every reload."""
    result = preflight(config, environ, options)
    if not result.ok:
        return None, result.problems
    try:
        return plan_launch(config, result.install, environ), result.problems
    except PlanError as exc:  # a file changed since preflight read it
        return None, [*result.problems, exc.as_problem(config)]
