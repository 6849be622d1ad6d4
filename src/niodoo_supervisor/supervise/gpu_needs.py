"""What vLLM's start needs of the GPUs: how many of the visible ones this host's part uses,
and the fraction of each it takes (`gpu_memory` checks them against NVML's reading)."""

from __future__ import annotations

import dataclasses
from typing import Any

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.gpu.nvml import GpuDevice
from niodoo_supervisor.launch.topology import HostRole
from niodoo_supervisor.launch.topology_preflight import gpus_needed
from niodoo_supervisor.supervise.gpu_holders import MIB

__all__ = ["free_memory", "gpus_used", "utilization"]


def utilization(config: Config, vllm_version: str | None) -> float:
    """The fraction of each GPU vLLM takes: the config's, else vLLM's default (0.92 from
    vLLM 0.20, 0.9 before; a version not known counts as recent)."""
    if config.engine.gpu_memory_utilization is not None:
        return float(config.engine.gpu_memory_utilization)
    try:
        old = vllm_version is not None and Version.parse(vllm_version) < Version(0, 20)
    except ValueError:
        old = False
    return 0.9 if old else 0.92


def gpus_used(config: Config, role: HostRole) -> int | None:
    """How many GPUs, from the front of the visible list, this host's part uses; None: all.

    vLLM's workers take `cuda:0`.. in order, so a stranger on a GPU past them is no reason
    to wait. One host is mp's count on one node (TP x PP x DP); mp and dp count this node's
    part as the preflight does. Ray (head and `ray-worker` alike) gives Ray the visible GPUs
    and Ray places vLLM's workers on any of them: all are checked, on a worker too, whose
    Ray node runs those workers."""
    if role.backend == "none":
        role = dataclasses.replace(role, backend="mp", nodes=1)
    return gpus_needed(config, role)


def free_memory(device: GpuDevice, need: float) -> dict[str, Any]:
    """A GPU's free memory against what vLLM needs of it, in MiB (for records)."""
    return {
        "index": device.index,
        "free_mib": round(device.free_bytes / MIB),
        "total_mib": round(device.total_bytes / MIB),
        "needed_mib": round(need * device.total_bytes / MIB),
    }
