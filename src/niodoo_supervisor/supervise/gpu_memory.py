"""GPU memory around vLLM's starts and stops, as NVML reports it (`gpu.nvml`).

Before every start each GPU vLLM will use (the first `gpus_used` of those
`CUDA_VISIBLE_DEVICES` in vLLM's environment names, all when unset, as CUDA counts them) must have `engine.gpu_memory_utilization` x total free, or vLLM refuses to start
("Free memory on device ... is less than desired GPU memory utilization") and a restart loop
follows. What holds it is named: pid, process name, MiB and whether it is ours (a session
this supervisor started, or one its run record names). Leftovers the run record names are
ended by the leftover rules (`leftovers`); memory held by anyone else is waited for with a
backoff, shown in the status and STATUS=, never a crash and never FATAL.

After every stop the supervisor waits (`gpu.release_timeout`) until NVML lists no process of
the stopped session and the memory is back, and says how long that took, or who still holds
what. NVML missing is one line and everything here is skipped (`auto`), or a refused start
(`required`); NVML failing later is one warning, and supervision goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.gpu.nvml import GpuDevice, GpuUnavailable, mig_devices
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.gpu_holders import (
    GIB,
    MIB,
    Holder,
    comm,
    holders_of,
    named,
    session_of,
)
from niodoo_supervisor.supervise.gpu_needs import free_memory, gpus_used, utilization
from niodoo_supervisor.supervise.gpu_source import GpuSource
from niodoo_supervisor.supervise.leftovers import end_leftovers
from niodoo_supervisor.supervise.process_tree import session_members
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.seams import Clock

__all__ = ["GO", "GpuMemory", "StartVerdict"]

log = structlog.get_logger("niodoo_supervisor")

FIRST_RETRY = 5.0  # seconds before the first check again; doubled up to gpu.busy_retry_max
RELEASE_POLL = 0.25  # seconds between NVML reads while a stopped session's memory is freed
# Memory counts as back when within this of before: the driver's own use moves a little.
SLACK_BYTES = 128 * MIB
MIN_SAMPLE_EVERY = 0.2  # seconds; the sampler follows supervisor.health.interval


@dataclass(frozen=True)
class StartVerdict:
    wait: float | None = None  # check again after this many seconds
    refused: str | None = None  # the start cannot happen (gpu.nvml: required without NVML)


GO = StartVerdict()


@dataclass(frozen=True)
class _Running:
    used_bytes: int  # the GPU's, at the last reading while vLLM ran
    session_bytes: int  # what vLLM's processes held then


class GpuMemory:
    """The policy; `source` None: no NVML at all (tests of other things)."""

    def __init__(
        self,
        source: GpuSource | None,
        reporter: Reporter,
        clock: Clock,
        environ: dict[str, str],
    ) -> None:
        self.source = source
        self.reporter = reporter
        self.clock = clock
        self.environ = environ
        self.opened = False
        self.visible: str | None = None  # CUDA_VISIBLE_DEVICES of the last start
        self.count: int | None = None  # of the visible GPUs, how many vLLM uses (None: all)
        self.sample_every = 5.0
        self.ours: set[int] = set()  # pids of our sessions, and leftovers ended
        self.names: dict[int, str] = {}  # of our processes, once seen
        self.leaders: set[int] = set()  # session ids (= leaders' pids) of vLLMs we launched
        self.session: int | None = None  # the running vLLM's session
        self.session_pids: set[int] = set()
        self.before: dict[int, int] = {}  # free bytes per GPU when the last start was let go
        self.running: dict[int, _Running] = {}
        self.retry: float | None = None
        self.wait_since: float | None = None
        self.stopping_session = False
        self._lock = asyncio.Lock()
        self._sampler: asyncio.Task[None] | None = None

    def note_ours(self, ended: dict[int, str]) -> None:
        """vLLM processes of ours ended elsewhere (a predecessor's leftovers), by pid: their
        names, for when NVML lists them after they are gone."""
        self.ours |= set(ended)
        self.names.update(ended)

    # --- before a start --------------------------------------------------------------------

    async def ready(
        self, config: Config, plan: LaunchPlan, backoff: Callable[[float], Awaitable[bool]]
    ) -> int | None:
        """Wait until the GPUs have the memory vLLM's start needs (memory others hold is
        waited for with `backoff`, like a restart's, never a crash; it answers True when a
        stop was asked): None, or the supervisor's exit code."""
        while True:
            verdict = await self.before_start(config, plan)
            if verdict.refused is not None:
                return self.reporter.fatal(verdict.refused, exitcodes.CONFIG)
            if verdict.wait is None:
                return None
            if await backoff(verdict.wait):
                return self.reporter.stopped_while_idle(
                    "stop requested while waiting for GPU memory"
                )

    async def before_start(self, config: Config, plan: LaunchPlan) -> StartVerdict:
        """May vLLM start now? GO, a wait (memory held by others, or freed late), or a refusal."""
        if config.gpu.nvml == "off" or self.source is None:
            return GO
        # As vLLM will see it: the config's server.env, else the supervisor's environment.
        vllm_env = {**plan.child_environment(self.environ), **config.server.env}
        self.visible = vllm_env.get("CUDA_VISIBLE_DEVICES")
        self.count = gpus_used(config, plan.role)
        self.sample_every = max(config.supervisor.health.interval, MIN_SAMPLE_EVERY)
        if not self.opened:
            try:
                await self.source.open()
            except GpuUnavailable as exc:
                return self._unavailable(config, str(exc))
            self.opened = True
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        if migs := mig_devices(self.visible):
            return self._unavailable(
                config,
                f"CUDA_VISIBLE_DEVICES names MIG device(s) {', '.join(migs)}: their memory is "
                "not checked (the checks read whole GPUs)",
            )
        need = utilization(config, plan.vllm_version)
        for attempt in range(2):
            devices = await self._read()
            if devices is None:
                return GO
            if not devices:  # never "checked" with nothing checked
                return self._unavailable(
                    config, f"CUDA_VISIBLE_DEVICES={self.visible!r} names no GPU NVML lists"
                )
            short = [d for d in devices if d.free_bytes < need * d.total_bytes]
            if not short:
                self._passed(devices, need)
                return GO
            holders = holders_of(config, short, self.ours, self.leaders, self.names)
            if attempt or not any(holder.recorded for holder in holders):
                return self._busy(config, short, holders, need)
            # A recorded session of ours holds it: end it as any leftover, then read again.
            log.warning(
                "gpu_memory_leftovers",
                holders=[holder.describe() for holder in holders if holder.recorded],
                action="ending them (the run record names them)",
            )
            self.note_ours(await end_leftovers(config))
        return GO  # not reached: the second attempt returned

    def _unavailable(self, config: Config, reason: str) -> StartVerdict:
        if config.gpu.nvml == "required":
            return StartVerdict(refused=f"gpu.nvml is required, but {reason}")
        log.info("gpu_nvml_unavailable", reason=reason, action="GPU memory checks skipped")
        self._drop_source()
        return GO

    def _passed(self, devices: list[GpuDevice], need: float) -> None:
        log.info(
            "gpu_memory_checked",
            scope="every visible GPU (Ray places vLLM's workers)"
            if self.count is None
            else f"the first {self.count} visible GPU(s), those vLLM uses",
            gpus=[
                f"GPU {d.index}: {d.free_bytes / GIB:.1f} of {d.total_bytes / GIB:.1f} GiB "
                f"free, {need * d.total_bytes / GIB:.1f} needed"
                for d in devices
            ],
        )
        self.before = {d.index: d.free_bytes for d in devices}
        self.retry = self.wait_since = None
        if self.reporter.status.gpu_wait is not None:
            self.reporter.status.gpu_wait = None
            self.reporter.write_status()

    def _busy(
        self, config: Config, short: list[GpuDevice], holders: list[Holder], need: float
    ) -> StartVerdict:
        limit = config.gpu.busy_retry_max
        self.retry = min(limit, FIRST_RETRY if self.retry is None else self.retry * 2)
        if self.wait_since is None:
            self.wait_since = self.clock.wall()
        gpus = "; ".join(
            f"GPU {d.index} has {d.free_bytes / GIB:.1f} of {d.total_bytes / GIB:.0f} GiB "
            f"free, held by {named(h for h in holders if h.gpu == d.index)}"
            for d in short
        )
        text = f"waiting for GPU memory: {gpus}; next check in {self.retry:g} s"
        log.warning(
            "gpu_memory_busy",
            gpus=[f"GPU {d.index}: {d.free_bytes / GIB:.1f} GiB free" for d in short],
            needed_fraction=need,
            holders=[holder.describe() for holder in holders],
            retry_in_s=self.retry,
            reason="vLLM would refuse to start; waiting, not a crash",
        )
        self.reporter.status.gpu_wait = {
            "since": self.wait_since,
            "reason": text,
            "retry_in_s": self.retry,
            "needed_fraction": need,
            "gpus": [free_memory(d, need) for d in short],
            "holders": [holder.as_dict() for holder in holders],
        }
        self.reporter.write_status()
        self.reporter.notify(*systemd.status(text))
        return StartVerdict(wait=self.retry)

    # --- while vLLM runs ---------------------------------------------------------------------

    def launched(self, leader: int) -> None:
        self.session = leader
        self.leaders.add(leader)
        self.session_pids = {leader}
        self.running = {}
        self.stopping_session = False

    def stopping(self) -> None:
        """Just before vLLM is stopped: its processes now are those NVML must drop."""
        if self.session is not None:
            members = session_members(self.session)
            self.session_pids |= {member.pid for member in members}
            self.note_ours({member.pid: member.name for member in members})
            # Not read again until the stop is over: the release is timed from there.
            self.stopping_session = True

    async def _sample_forever(self) -> None:
        while self.source is not None:
            await asyncio.sleep(self.sample_every)
            if self.session is not None and not self.stopping_session and not self._lock.locked():
                await self._read()

    async def _read(self) -> list[GpuDevice] | None:
        """The visible GPUs now (the status and metrics follow); None when NVML failed."""
        if self.source is None:
            return None
        try:
            async with self._lock:
                devices = await self.source.devices(self.visible)
            devices = devices[: self.count]
        except GpuUnavailable as exc:
            self._failed(str(exc))
            return None
        if self.session is not None:
            self._note_session(devices)
        self._show(devices)
        return devices

    def _note_session(self, devices: list[GpuDevice]) -> None:
        for device in devices:
            held = 0
            for process in device.processes:
                if process.pid in self.session_pids or session_of(process.pid) == self.session:
                    self.session_pids.add(process.pid)
                    held += process.used_bytes or 0
            self.running[device.index] = _Running(device.used_bytes, held)
        self.ours |= self.session_pids

    def _show(self, devices: list[GpuDevice]) -> None:
        gpus = [
            {
                "index": d.index,
                "uuid": d.uuid,
                "name": d.name,
                "used_mib": round(d.used_bytes / MIB),
                "total_mib": round(d.total_bytes / MIB),
                "session_processes": [
                    {
                        "pid": p.pid,
                        "mib": None if p.used_bytes is None else round(p.used_bytes / MIB),
                    }
                    for p in d.processes
                    if p.pid in self.session_pids
                ],
            }
            for d in devices
        ]
        if gpus != self.reporter.status.gpus:
            self.reporter.status.gpus = gpus
            self.reporter.write_status()

    def _failed(self, reason: str) -> None:
        log.warning(
            "gpu_nvml_failed",
            reason=reason,
            action="GPU memory is not checked any more; supervision goes on (restarting the "
            "supervisor tries NVML again)",
        )
        self._drop_source()

    def _drop_source(self) -> None:
        if self.source is not None:
            self.source.close()
        self.source = None
        status = self.reporter.status
        if status.gpus or status.gpu_wait is not None:
            status.gpus, status.gpu_wait = [], None
            self.reporter.write_status()

    # --- after a stop ------------------------------------------------------------------------

    async def after_stop(self, config: Config, stop: asyncio.Event | None = None) -> None:
        """Wait until NVML lists no process of the stopped session and its memory is back,
        at most `gpu.release_timeout`, or until `stop` is set (a stop asked for: systemd
        would SIGKILL a supervisor waiting on); say how long it took, or who holds what."""
        session, self.session = self.session_pids, None
        if self.source is None or not self.opened:
            return
        timeout = config.gpu.release_timeout
        began = self.clock.monotonic()
        async with self.reporter.watchdog_fed(extend=timeout + 5.0):
            while (devices := await self._read()) is not None:
                waited = self.clock.monotonic() - began
                pending = [d for d in devices if not self._released(d, session)]
                if not pending:
                    log.info("gpu_memory_released", seconds=round(waited, 2), gpus=len(devices))
                    return
                if waited >= timeout or (stop is not None and stop.is_set()):
                    self._held(pending, session, waited, cut_short=waited < timeout)
                    return
                if waited == 0:
                    self.reporter.notify(
                        *systemd.status("waiting for vLLM's GPU memory to be freed")
                    )
                await _sleep_unless(stop, min(RELEASE_POLL, timeout - waited))

    def _released(self, device: GpuDevice, session: set[int]) -> bool:
        if any(process.pid in session for process in device.processes):
            return False
        before = self.before.get(device.index)
        if before is not None and device.free_bytes + SLACK_BYTES >= before:
            return True
        running = self.running.get(device.index)
        if running is not None:
            return device.used_bytes <= running.used_bytes - running.session_bytes + SLACK_BYTES
        return before is None

    def _held(
        self, pending: list[GpuDevice], session: set[int], waited: float, *, cut_short: bool
    ) -> None:
        holders = [
            f"GPU {d.index}: {d.free_bytes / GIB:.1f} of {d.total_bytes / GIB:.1f} GiB free"
            + "".join(
                f", pid {p.pid} ({comm(p.pid) or p.name or '?'}"
                f"{'' if p.used_bytes is None else f', {p.used_bytes / GIB:.1f} GiB'}"
                f"{', of the stopped vLLM' if p.pid in session else ''})"
                for p in d.processes
            )
            for d in pending
        ]
        log.warning(
            "gpu_memory_held",
            seconds=round(waited, 2),
            holders=holders,
            action="a stop was asked: not waiting any more"
            if cut_short
            else "going on; the next start checks the memory again",
        )

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self.source is not None:
            self.source.close()
            self.source = None


async def _sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, less when `stop` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
