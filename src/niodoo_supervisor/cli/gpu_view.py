"""The `gpus:` lines of `status`: a start waiting for GPU memory others hold, and per GPU its
memory used and vLLM's processes on it (status.json's `gpu_wait` and `gpus`, written by
`supervise/gpu_memory.py`). Nothing when NVML is not used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from niodoo_supervisor.cli.status_fields import count, mapping, number, shown
from niodoo_supervisor.cli.times import at_and_ago

__all__ = ["gpu_lines"]

_LABEL = "gpus:      "
_PAD = " " * len(_LABEL)
_LISTED = 8  # GPUs and processes shown; a larger host's rest is counted
MIB_PER_GIB = 1024


def gpu_lines(status: Mapping[str, Any], now: float) -> list[str]:
    rows = []
    wait = status.get("gpu_wait")
    if isinstance(wait, dict):
        since = number(wait.get("since"))
        when = f" (since {at_and_ago(since, now)})" if since is not None else ""
        rows.append(f"{shown(wait.get('reason') or 'waiting for GPU memory', 400)}{when}")
    gpus = status.get("gpus")
    listed = [mapping(gpu) for gpu in gpus[:_LISTED]] if isinstance(gpus, list) else []
    rows.extend(_gpu_row(gpu) for gpu in listed)
    if isinstance(gpus, list) and len(gpus) > _LISTED:
        rows.append(f"and {len(gpus) - _LISTED} more GPUs")
    return [(_LABEL if i == 0 else _PAD) + row for i, row in enumerate(rows)]


def _gpu_row(gpu: Mapping[str, Any]) -> str:
    index = count(gpu.get("index"))
    used, total = number(gpu.get("used_mib")), number(gpu.get("total_mib"))
    memory = (
        f"{used / MIB_PER_GIB:.1f} of {total / MIB_PER_GIB:.1f} GiB used"
        if used is not None and total is not None
        else "memory unknown"
    )
    processes = gpu.get("session_processes")
    ours = [mapping(p) for p in processes[:_LISTED]] if isinstance(processes, list) else []
    named = ", ".join(
        f"pid {shown(count(p.get('pid')))}"
        + (f" ({mib / MIB_PER_GIB:.1f} GiB)" if (mib := number(p.get("mib"))) is not None else "")
        for p in ours
    )
    name = shown(gpu.get("name") or "?", 64)
    return f"GPU {index if index is not None else '?'} ({name}): {memory}; " + (
        f"vLLM: {named}" if named else "no vLLM process on it"
    )
