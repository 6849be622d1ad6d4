"""Who holds GPU memory: each process NVML lists on a GPU short of free memory, with its
name (/proc's comm, else NVML's) and whether it is ours (`gpu_memory` decides what to do)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.gpu.nvml import GpuDevice
from niodoo_supervisor.supervise import run_record

__all__ = ["GIB", "MIB", "Holder", "comm", "holders_of", "named", "session_of"]

GIB = float(1 << 30)
MIB = 1 << 20


@dataclass(frozen=True)
class Holder:
    """A process holding memory on a GPU that lacks free memory."""

    gpu: int
    pid: int
    name: str
    used_bytes: int | None
    ours: bool  # of a vLLM session this supervisor started or its run record names
    recorded: bool  # alive, named by the run record: a leftover to end
    alive: bool

    def describe(self) -> str:
        size = "? GiB" if self.used_bytes is None else f"{self.used_bytes / GIB:.1f} GiB"
        whose = "not ours"
        if self.ours:
            whose = "ours" if self.alive else "ours, exited; the driver has not freed it yet"
        return f"pid {self.pid} ({self.name}, {size}, {whose})"

    def as_dict(self) -> dict[str, Any]:
        mib = None if self.used_bytes is None else round(self.used_bytes / MIB)
        return {"gpu": self.gpu, "pid": self.pid, "name": self.name, "mib": mib, "ours": self.ours}


def holders_of(
    config: Config,
    short: list[GpuDevice],
    our_pids: set[int],
    leaders: set[int],
    names: dict[int, str],
) -> list[Holder]:
    """Every process holding memory on the `short` GPUs: `our_pids` are pids of our sessions,
    `leaders` the session ids of the vLLMs this supervisor launched, `names` what our
    processes were called (NVML may list them after they are gone)."""
    recorded = _recorded_leftovers(config)
    holders = []
    for device in short:
        for process in device.processes:
            alive = _alive(process.pid)
            ours = (
                process.pid in our_pids
                or process.pid in recorded
                or (alive and session_of(process.pid) in leaders)
            )
            holders.append(
                Holder(
                    device.index,
                    process.pid,
                    comm(process.pid) or process.name or names.get(process.pid) or "?",
                    process.used_bytes,
                    ours=ours,
                    recorded=alive and process.pid in recorded,
                    alive=alive,
                )
            )
    return holders


def named(holders: Iterable[Holder]) -> str:
    listed = [holder.describe() for holder in holders]
    return ", ".join(listed) if listed else "no process NVML can name (another container?)"


def _recorded_leftovers(config: Config) -> set[int]:
    record = run_record.read(config.state_dir)
    if record is None:
        return set()
    executable = os.path.realpath(config.server.python)
    return {process.pid for process in run_record.leftover_processes(record, executable)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def comm(pid: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return Path(f"/proc/{pid}/comm").read_text().strip()[:64]
    return ""
