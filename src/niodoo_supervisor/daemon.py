"""`niodoo-supervisor run`: everything between the command line and the main loop.

Order matters: the config, then the state folder is checked and locked (one supervisor per
folder), then leftovers of a previous supervisor are ended (they hold the port and GPU memory),
then preflight refuses what cannot work, then the loop starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import structlog

from . import exitcodes, statefile
from .config import Config, load_config
from .incidents import ReloadResult
from .notify import SystemdNotifier
from .preflight import PreflightOptions, PreflightResult, preflight
from .process import terminate_processes
from .statedir import StateDirError, StateLock, prepare
from .supervisor import Supervisor

__all__ = ["configure_logging", "run_daemon"]

log = structlog.get_logger("niodoo_supervisor")


def configure_logging() -> None:
    """The supervisor's own events: logfmt on stderr (the journal); vLLM's lines go to stdout."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            structlog.processors.LogfmtRenderer(
                key_order=["timestamp", "level", "event"], bool_as_flag=False
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def run_daemon(config_path: Path, *, check_flags: bool = True) -> int:
    configure_logging()
    environ = dict(os.environ)
    config, problems = load_config(config_path, environ)
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
        return _run_locked(config_path, config, environ, check_flags)
    finally:
        lock.release()


def _run_locked(
    config_path: Path, config: Config, environ: dict[str, str], check_flags: bool
) -> int:
    asyncio.run(_end_leftovers(config))
    result = preflight(config, environ, PreflightOptions(check_flags=check_flags))
    for problem in result.problems:
        _log_problem(problem.format(), problem.is_error)
    if not result.ok or result.launch is None:
        log.error(
            "preflight_refused",
            errors=sum(p.is_error for p in result.problems),
            hint="niodoo-supervisor check -c CONFIG shows the same",
        )
        return exitcodes.CONFIG
    supervisor = Supervisor(
        config,
        result.launch,
        api_key=result.api_key,
        notifier=SystemdNotifier(),
        environ=environ,
        reloader=lambda: _reload(config_path, environ),
        vllm_version=result.install.version_text if result.install else None,
    )
    log.info("starting", config=str(config_path), argv=" ".join(result.launch.redacted_argv()))
    return asyncio.run(supervisor.run())


def _log_problem(text: str, is_error: bool) -> None:
    (log.error if is_error else log.warning)("config_problem", problem=text)


async def _end_leftovers(config: Config) -> None:
    record = statefile.read(config.state_dir)
    if record is None:
        statefile.clear(config.state_dir)  # an invalid record is not read twice
        return
    # Only processes running the interpreter this config launches: a record naming anything
    # else is stale or planted.
    executable = os.path.realpath(config["server.python"])
    leftovers = statefile.leftover_processes(record, executable)
    if leftovers:
        log.warning(
            "leftovers_found",
            processes=[p.describe() for p in leftovers],
            reason="a previous supervisor did not stop its vLLM",
        )
        killed, survivors = await terminate_processes(
            leftovers, config["supervisor.stop.grace_period"]
        )
        if survivors:
            log.error("leftovers_survive", processes=[p.describe() for p in survivors])
        else:
            log.info("leftovers_ended", processes=len(leftovers), sigkilled=len(killed))
    statefile.clear(config.state_dir)


async def _reload(config_path: Path, environ: dict[str, str]) -> ReloadResult:
    def load() -> ReloadResult:
        config, problems = load_config(config_path, environ)
        errors = [problem.format() for problem in problems if problem.is_error]
        if config is None:
            return ReloadResult(None, None, errors)
        result: PreflightResult = preflight(config, environ, PreflightOptions(check_port=False))
        errors += [problem.format() for problem in result.problems if problem.is_error]
        if errors or result.launch is None:
            return ReloadResult(None, None, errors)
        return ReloadResult(config, result.launch, api_key=result.api_key)

    return await asyncio.to_thread(load)
