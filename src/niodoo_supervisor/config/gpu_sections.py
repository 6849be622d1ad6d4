"""The `gpu` section: GPU memory seen through NVML (the optional `gpu` extra,
`niodoo-supervisor[gpu]`, which installs `nvidia-ml-py`).

Before every start the GPUs vLLM will use (`CUDA_VISIBLE_DEVICES` in server.env or the
supervisor's environment; all when unset) must have `engine.gpu_memory_utilization` x total
free; after every stop the supervisor waits until the stopped session's memory is back. What it
does with NVML is `supervise/gpu_memory.py`; NVML itself is behind `gpu/`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from niodoo_supervisor.config.value_types import Number, Section

__all__ = ["GpuSection"]


class GpuSection(Section):
    """gpu: GPU memory checks through NVML."""

    nvml: Annotated[
        Literal["auto", "required", "off"],
        Field(
            description="`auto`: check GPU memory when NVML answers (the `gpu` extra is "
            "installed and a driver is loaded), else say once that it is skipped. `required`: "
            "NVML not answering at start is an error. `off`: never ask NVML."
        ),
    ] = "auto"
    release_timeout: Annotated[
        Number,
        Field(
            ge=0.0,
            le=3600.0,
            description="Seconds a stop waits, after vLLM's processes are gone, until NVML "
            "lists none of them and their memory is free again; a restart starts only after. "
            "When it passes, the supervisor names who still holds what and goes on.",
        ),
    ] = 60.0
    busy_retry_max: Annotated[
        Number,
        Field(
            gt=0.0,
            le=3600.0,
            description="Memory held by processes that are not the supervisor's is waited "
            "for, never a crash: the free memory is checked again after 5 s, doubling up to "
            "this many seconds between checks.",
        ),
    ] = 60.0
