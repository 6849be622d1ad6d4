"""vLLM as an OS process tree: spawn in a new session, stop it the way it drains, verify it is gone.

vLLM's API server starts `VLLM::EngineCore` and worker processes. When the API server is
SIGKILLed they survive, reparented, holding (GPU) memory (upstream vllm#55510). So vLLM is
started as the leader of a new session and everything is addressed by that session id.

A stop signals the API server (the leader) alone first: it drains in-flight requests
(`--shutdown-timeout`) and then stops its own engine and workers. SIGTERM to the whole
group at once would end the EngineCore while the API server drains, cutting every request
in flight. Only after the grace period (or when the leader is gone but members are left)
is the group signalled, then SIGKILLed, then every process still carrying the session id
is found and ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import psutil

# After the grace period: how long the group has between SIGTERM and SIGKILL. vLLM's engine
# and workers end within a second of a SIGTERM when they still answer signals at all.
GROUP_TERM_WAIT = 2.0
# After SIGKILL: how long the kernel gets to end them before survivors are reported.
KILL_WAIT = 5.0

__all__ = [
    "GROUP_TERM_WAIT",
    "KILL_WAIT",
    "ProcessRecord",
    "VllmProcess",
    "alive",
    "protected_pids",
    "same_process",
    "session_members",
    "spawn",
    "terminate_processes",
    "terminate_takes_at_most",
]


def terminate_takes_at_most(grace: float) -> float:
    """The longest `VllmProcess.terminate(grace)` can take: grace, group SIGTERM, SIGKILL,
    and the final wait for the leader's exit status."""
    return grace + GROUP_TERM_WAIT + 2 * KILL_WAIT


@dataclass(frozen=True)
class ProcessRecord:
    """A process as recorded in the state file. The create time guards against pid reuse;
    the executable (resolved, as the kernel reports it) against a record naming a stranger."""

    pid: int
    create_time: float
    name: str = ""
    exe: str = ""

    def describe(self) -> str:
        return f"{self.name or 'process'} (pid {self.pid})"


def _record(process: psutil.Process) -> ProcessRecord | None:
    try:
        with process.oneshot():
            return ProcessRecord(process.pid, process.create_time(), process.name(), _exe(process))
    except psutil.Error:
        return None


def _exe(process: psutil.Process) -> str:
    try:
        return process.exe()
    except psutil.Error:  # another user's process, or a zombie: nothing to compare with
        return ""


def session_members(sid: int) -> list[ProcessRecord]:
    """Every live (non-zombie) process whose session id is `sid`."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) != sid or process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (OSError, psutil.Error):
            continue
        record = _record(process)
        if record is not None:
            members.append(record)
    return members


def alive(record: ProcessRecord) -> bool:
    """True only for the very process recorded (same pid and same start time), not a reuse."""
    try:
        process = psutil.Process(record.pid)
        return (
            abs(process.create_time() - record.create_time) < 0.01
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def same_process(record: ProcessRecord, sid: int) -> bool:
    """True only when the live process with the recorded pid has the recorded start time,
    session and executable: all four, so a stale or planted record names nothing else."""
    if not record.exe:
        return False
    try:
        process = psutil.Process(record.pid)
        with process.oneshot():
            return (
                abs(process.create_time() - record.create_time) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
                and os.getsid(record.pid) == sid
                and _exe(process) == record.exe
            )
    except (OSError, psutil.Error):
        return False


def protected_pids() -> frozenset[int]:
    """Never signalled, whatever a record says: pid 0 and 1 (0 would address our own group,
    1 is init), this supervisor and its ancestors (systemd, a shell, a test runner)."""
    pids = {0, 1, os.getpid()}
    with contextlib.suppress(psutil.Error):
        pids.update(parent.pid for parent in psutil.Process().parents())
    return frozenset(pids)


def _send(record: ProcessRecord, sig: signal.Signals) -> None:
    # Re-check identity right before signalling: the pid may have been reused meanwhile.
    if record.pid not in protected_pids() and alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, sig)


async def terminate_processes(
    records: Iterable[ProcessRecord], grace: float, *, kill_timeout: float = 5.0
) -> tuple[list[ProcessRecord], list[ProcessRecord]]:
    """SIGTERM the recorded processes, SIGKILL those left after `grace` seconds.

    Returns (killed with SIGKILL, still alive afterwards). Only the recorded processes are
    touched, each checked against its start time first.
    """
    protected = protected_pids()
    targets = [record for record in records if record.pid not in protected and alive(record)]
    for record in targets:
        _send(record, signal.SIGTERM)
    remaining = await _wait_gone(targets, grace)
    for record in remaining:
        _send(record, signal.SIGKILL)
    survivors = await _wait_gone(remaining, kill_timeout)
    return remaining, survivors


async def _wait_gone(records: list[ProcessRecord], timeout: float) -> list[ProcessRecord]:
    deadline = time.monotonic() + timeout
    remaining = [record for record in records if alive(record)]
    while remaining and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        remaining = [record for record in remaining if alive(record)]
    return remaining


class VllmProcess:
    """The running vLLM: the leader of its own session, its output on one pipe."""

    def __init__(self, process: asyncio.subprocess.Process, output_fd: int, started: float) -> None:
        self.process = process
        self.pid = process.pid
        self.sid = process.pid  # start_new_session: the leader's pid is the session and group id
        self.output_fd = output_fd
        self.started = started
        try:
            self.leader = _record(psutil.Process(self.pid)) if self.returncode is None else None
        except psutil.Error:  # it already exited (and may have been reaped)
            self.leader = None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def members(self) -> list[ProcessRecord]:
        return session_members(self.sid)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.sid, sig)

    def signal_leader(self, sig: signal.Signals) -> None:
        """Signal the API server alone (a no-op once it has exited: its pid may be reused)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def terminate(
        self, grace: float, *, group_wait: float = GROUP_TERM_WAIT, kill_wait: float = KILL_WAIT
    ) -> tuple[list[ProcessRecord], list[ProcessRecord]]:
        """SIGTERM the API server alone and give it `grace` seconds to drain and end its own
        engine and workers. Whatever of the session is left then (or as soon as the leader
        has exited) gets SIGTERM as a group, SIGKILL `group_wait` seconds later. Returns
        (SIGKILLed, survivors)."""
        self.signal_leader(signal.SIGTERM)
        await self._within(grace, lambda: self.returncode is not None)
        killed: list[ProcessRecord] = []
        if not self._session_gone():
            # vLLM did not end in time, or its leader left members behind: end them.
            self._signal_session(signal.SIGTERM)
            if not await self._within(group_wait, self._session_gone):
                killed = self.members()
                self._signal_session(signal.SIGKILL)
                await self._within(kill_wait, self._session_gone)
        if self.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout=kill_wait)
        return killed, self.members()

    def _signal_session(self, sig: signal.Signals) -> None:
        """The group, and every member that left it (setpgid) but kept the session id."""
        self.signal_group(sig)
        for record in self.members():
            _send(record, sig)

    def _session_gone(self) -> bool:
        return self.returncode is not None and not self.members()

    async def _within(self, timeout: float, done: Callable[[], bool]) -> bool:
        """Wait until `done()` or `timeout` seconds; returns `done()` at the end."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.output_fd)


async def spawn(
    argv: tuple[str, ...], env: Mapping[str, str], cwd: str | None = None
) -> VllmProcess:
    """Start vLLM in a new session with stdout and stderr on one non-blocking pipe."""
    read_fd, write_fd = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child holds its copy; EOF arrives when its whole tree is done
    os.set_blocking(read_fd, False)
    return VllmProcess(process, read_fd, time.monotonic())
