"""One run of vLLM: the process tree, the pump reading its output, and its state-file record.

The supervisor's loop decides; this module does the I/O of a single launch: write the logging
config, spawn, pump the output, tell the loop when the process exits, record its processes for
a successor, and stop it without leaving anything behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence

import psutil
import structlog

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.files.atomic import atomic_write, describe_os_error, exit_code_for
from niodoo_supervisor.launch.lora_guard import write_guard
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.launch.vllm_metadata import write_vllm_metadata
from niodoo_supervisor.logs.pump import LogPump
from niodoo_supervisor.logs.request_hints import ServedNames
from niodoo_supervisor.logs.rule_types import Event
from niodoo_supervisor.logs.rules import RuleSet
from niodoo_supervisor.logs.sinks import RotatingLogFile
from niodoo_supervisor.output.writer import EchoTarget
from niodoo_supervisor.supervise import companion, run_record
from niodoo_supervisor.supervise.process_tree import VllmProcess, spawn, terminate_takes_at_most

__all__ = [
    "DRAIN_MARGIN",
    "LaunchError",
    "VllmLauncher",
    "VllmRun",
    "stop_grace",
    "stop_takes_at_most",
]

log = structlog.get_logger("niodoo_supervisor")

_OWN_START = psutil.Process().create_time()

# What vLLM needs after its --shutdown-timeout drain: up to 5 s for its workers to exit
# (VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS) and a few seconds to tear down and exit.
DRAIN_MARGIN = 10.0


def stop_grace(grace_period: float, drain: int | None) -> float:
    """How long a stop waits for vLLM to end by itself before signalling its whole group:
    `grace_period` (`supervisor.stop.grace_period`), or, when vLLM was launched to drain
    (`drain.timeout` > 0), at least that drain plus `DRAIN_MARGIN`: a shorter wait
    would cut the drain it was asked for."""
    return max(grace_period, drain + DRAIN_MARGIN) if drain else grace_period


# After vLLM is gone: how long its last lines may take to be read.
LAST_LINES_WAIT = 5.0


def stop_takes_at_most(grace: float) -> float:
    """The longest `VllmRun.stop(grace)` takes: ending the process tree, then its last lines."""
    return terminate_takes_at_most(grace) + LAST_LINES_WAIT


class LaunchError(Exception):
    """vLLM could not be started at all; the message says why, `exit_code` whether retrying
    may help (75: a full disk, no memory to fork) or not (78)."""

    def __init__(self, message: str, exit_code: int = exitcodes.CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _launch_error(what: str, exc: OSError) -> LaunchError:
    code = exit_code_for(exc)
    reason = describe_os_error(exc)
    retry = (
        "; this may clear by itself and systemd starts the service again"
        if code == exitcodes.TEMPFAIL
        else ""
    )
    return LaunchError(f"{what}: {reason}{retry}", code)


class VllmRun:
    def __init__(self, child: VllmProcess, pump: LogPump, config: Config, ruleset: RuleSet) -> None:
        self.child = child
        self.pump = pump
        self.config = config
        self.ruleset = ruleset  # its hints name the adapters served now (`serve_adapters`)
        self.pump_task = asyncio.get_running_loop().create_task(pump.run())
        self.pump_task.add_done_callback(_report_pump_failure)
        self.exit_task: asyncio.Task[None] | None = None
        self.record_failed = False

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def started(self) -> float:
        return self.child.started

    @property
    def dropped_bytes(self) -> int:
        return self.pump.stats.dropped_bytes

    def mark_serving(self) -> None:
        self.pump.mark_serving()

    def serve_adapters(self, adapters: Sequence[str]) -> None:
        """The adapters served changed live: the request mistakes' hints name these now."""
        self.ruleset.served = ServedNames(self.config.served_name, tuple(adapters))

    @classmethod
    async def launch(
        cls,
        config: Config,
        plan: LaunchPlan,
        environ: dict[str, str],
        *,
        log_file: RotatingLogFile,
        echo: EchoTarget | None,
        on_event: Callable[[Event], None],
        on_exit: Callable[[int, int], None],
    ) -> VllmRun:
        """Spawn vLLM; raises LaunchError when it cannot be started at all."""
        try:
            _write_logging_config(plan)
        except OSError as exc:
            path = plan.logging_config_path
            raise _launch_error(f"cannot write vLLM's logging config {path}", exc) from None
        if plan.lora_guard is not None:
            try:
                write_guard(plan.lora_guard)
            except OSError as exc:
                where = plan.lora_guard.folder
                raise _launch_error(f"cannot write the lora_name guard to {where}", exc) from None
        if plan.vllm_metadata is not None:
            try:
                write_vllm_metadata(plan.vllm_metadata)
            except OSError as exc:
                where = plan.vllm_metadata.folder
                raise _launch_error(
                    f"cannot write vLLM's package metadata to {where}", exc
                ) from None
        try:
            argv = companion.session_argv(config, plan)
        except OSError as exc:
            raise _launch_error("cannot write the session keeper", exc) from None
        try:
            child = await spawn(argv, plan.child_environment(environ))
        except OSError as exc:
            raise _launch_error(f"cannot execute {argv[0]}", exc) from None
        companion.started(plan, child.pid)
        try:
            ruleset = RuleSet(config.rules, served=served_names(config))
            pump = LogPump(
                child.output_fd,
                ruleset=ruleset,
                on_event=on_event,
                log_file=log_file,
                echo=echo,
                tail_lines=max(200, config.supervisor.log.crash_report_lines),
            )
            run = cls(child, pump, config, ruleset)
        except BaseException:
            await child.terminate(  # never leave it running
                stop_grace(config.supervisor.stop.grace_period, config.drain_timeout)
            )
            child.close()
            raise
        run.record_processes()

        async def watch_exit() -> None:
            returncode = await child.wait()
            companion.note_exit(plan, returncode)
            on_exit(child.pid, returncode)

        run.exit_task = asyncio.get_running_loop().create_task(watch_exit())
        return run

    def record_processes(self) -> None:
        """Write which processes are ours, for a successor if this supervisor is SIGKILLed.
        Called again on every check: vLLM starts its engine and workers after the leader."""
        child = self.child
        if child.leader is None:
            return
        members = tuple(member for member in child.members() if member.pid != child.pid)
        record = run_record.RunRecord(
            os.getpid(), child.sid, child.leader, members, supervisor_create_time=_OWN_START
        )
        try:
            run_record.write(self.config.state_dir, record)
        except OSError as exc:
            # Supervising goes on; only a successor's cleanup after a SIGKILL is at stake.
            if not self.record_failed:
                log.error(
                    "state_file_unwritable", state_dir=str(self.config.state_dir), error=str(exc)
                )
            self.record_failed = True

    def silent_for(self, now: float) -> float:
        last = self.pump.last_output_monotonic or self.child.started
        return now - last

    def tail(self, count: int) -> list[str]:
        return self.pump.tail()[-count:] if count else []

    def last_line(self) -> str:
        lines = [line for line in self.pump.tail() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    async def drain(self, timeout: float) -> None:
        """Wait for the pump to read everything written so far (EOF), at most `timeout`."""
        if not self.pump_task.done():
            # On timeout a surviving grandchild still holds the pipe; the stop ends it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pump_task), timeout=timeout)

    async def stop(self, grace: float) -> None:
        killed, survivors = await self.child.terminate(grace)
        if killed:
            log.warning(
                "vllm_killed",
                after_grace_s=grace,
                processes=[record.describe() for record in killed],
            )
        if survivors:
            log.error("vllm_survivors", processes=[record.describe() for record in survivors])
        await self.drain(LAST_LINES_WAIT)
        if not self.pump_task.done():
            self.pump_task.cancel()
        self.child.close()
        if not survivors:
            run_record.clear(self.config.state_dir)


class VllmLauncher:
    """Launches vLLM runs that share one rotating log file and one echo of vLLM's output."""

    def __init__(self, config: Config, environ: dict[str, str], echo: EchoTarget | None) -> None:
        self.environ = environ
        self.echo = echo
        self.log_file = RotatingLogFile(
            config.log_path,
            config.supervisor.log.max_bytes,
            config.supervisor.log.backup_count,
        )

    async def launch(
        self,
        config: Config,
        plan: LaunchPlan,
        *,
        on_event: Callable[[Event], None],
        on_exit: Callable[[int, int], None],
    ) -> VllmRun:
        return await VllmRun.launch(
            config,
            plan,
            self.environ,
            log_file=self.log_file,
            echo=self.echo,
            on_event=on_event,
            on_exit=on_exit,
        )

    def close(self) -> None:
        self.log_file.close()


def _write_logging_config(plan: LaunchPlan) -> None:
    if plan.logging_config is None:
        return  # the operator's own file
    # Replaced by a rename, never written through: a link planted there is not followed.
    atomic_write(plan.logging_config_path, json.dumps(plan.logging_config, indent=1), 0o640)


def _report_pump_failure(task: asyncio.Task[None]) -> None:
    # A dead pump means vLLM's lines are no longer read (and a full pipe would stall vLLM):
    # say so at once rather than after the start's stall timeout.
    if not task.cancelled() and task.exception() is not None:
        log.error("log_pump_failed", error=repr(task.exception()))


def served_names(config: Config) -> ServedNames:
    """The names the config serves, for the request mistakes' hints."""
    return ServedNames(config.served_name, tuple(adapter.name for adapter in config.adapters))
