"""NVML through `pynvml` (the `nvidia-ml-py` distribution, the `gpu` extra), as the supervisor
needs it: per visible GPU its memory and the processes holding some.

The binding is imported when NVML is opened, so the supervisor runs without it. Every NVML
error becomes `GpuUnavailable` with one line saying what failed and what fixes it; the
binding's own texts ("Driver Not Loaded") say neither.

Which GPUs: `CUDA_VISIBLE_DEVICES` read as vLLM reads it (`vllm/platforms/cuda.py`,
`device_control_id_to_physical_device_id`): an integer is the NVML index, anything else a
UUID (a unique prefix, as CUDA accepts, is enough). As in CUDA, the list ends at the first
entry naming no device: empty (or `-1`) means none. NVML itself ignores the variable and
always lists every device in PCI bus order. A MIG device (`MIG-...`) is not read: its memory
is a slice of its GPU's, which NVML reports per GPU here, so a list naming one raises
`GpuUnavailable` (the caller skips the checks) rather than reading as no device at all.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

__all__ = [
    "GpuDevice",
    "GpuProcess",
    "GpuReader",
    "GpuUnavailable",
    "NvmlReader",
    "describe_nvml_error",
    "mig_devices",
    "open_nvml",
    "visible_indexes",
]

BINDING = "pynvml"  # the module `nvidia-ml-py` installs
INSTALL = "pip install 'niodoo-supervisor[gpu]' (nvidia-ml-py)"
_NO_GPU = "no NVIDIA GPU on this host? set gpu.nvml: off"
MIG_PREFIX = "MIG-"  # CUDA's name of a MIG device: MIG-<uuid> (MIG-GPU-<uuid>/gi/ci before R470)

# NVML's return codes (nvml.h, the same in every binding) -> what it means and the fix.
_ERRORS: dict[int, str] = {
    1: "NVML is not initialised (a bug: please report it)",
    2: "NVML was passed an invalid argument (a bug: please report it)",
    3: "this GPU or driver does not support the query; update the NVIDIA driver",
    4: "no permission to query the GPU: run the supervisor as a user that may open /dev/nvidia*",
    6: "the GPU or process asked for was not found",
    9: "the NVIDIA kernel driver is not loaded: install it or load it (modprobe nvidia); "
    + _NO_GPU,
    10: "the GPU did not answer in time; check `nvidia-smi`",
    12: "the NVML library (libnvidia-ml.so.1) was not found: install the NVIDIA driver; " + _NO_GPU,
    13: "the driver's NVML lacks a function the binding needs: update the NVIDIA driver",
    15: "a GPU is lost (fell off the bus or otherwise inaccessible): see dmesg (Xid) and "
    "`nvidia-smi`; it needs a reset or a reboot",
    16: "a GPU needs a reset (nvidia-smi -r) or a reboot",
    17: "the GPU is in use by another process's exclusive mode",
    18: "the NVML library and the kernel driver differ in version (a driver update without "
    "a reboot): reboot or reload the nvidia module",
    999: "NVML failed for an unknown reason; check `nvidia-smi` and dmesg",
}


@dataclass(frozen=True)
class GpuProcess:
    pid: int  # as NVML reports it: the host's pid namespace
    used_bytes: int | None  # None: NVML cannot say (some drivers, containers)
    name: str = ""  # NVML's name for it, when it gives one


@dataclass(frozen=True)
class GpuDevice:
    index: int  # NVML's (PCI bus order)
    uuid: str
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    processes: tuple[GpuProcess, ...]


class GpuUnavailable(Exception):
    """NVML cannot answer; str() is one line: what and the fix."""


class GpuReader(Protocol):
    def devices(self, visible: str | None) -> list[GpuDevice]:
        """The GPUs `visible` (CUDA_VISIBLE_DEVICES; None: all) names, in its order.
        Raises GpuUnavailable."""
        ...

    def close(self) -> None: ...


def describe_nvml_error(value: object, text: str) -> str:
    """One line for NVML's error `value` (its return code), `text` being the binding's."""
    code = value if isinstance(value, int) else -1
    meaning = _ERRORS.get(code, "NVML failed; check `nvidia-smi` and dmesg")
    return f"NVML: {meaning} (NVML says {text!r}, code {code})"


def mig_devices(visible: str | None) -> list[str]:
    """The MIG devices `visible` (CUDA_VISIBLE_DEVICES) names."""
    entries = [] if visible is None else [part.strip() for part in visible.split(",")]
    return [entry for entry in entries if entry.startswith(MIG_PREFIX)]


def visible_indexes(visible: str | None, uuids: list[str]) -> list[int]:
    """The NVML indexes `visible` names, given every device's UUID in NVML's order.
    Raises GpuUnavailable when it names a MIG device."""
    if visible is None:
        return list(range(len(uuids)))
    if migs := mig_devices(visible):
        raise GpuUnavailable(
            f"CUDA_VISIBLE_DEVICES names MIG device(s) {', '.join(migs)}: their memory is not "
            "checked (the checks read whole GPUs); gpu.nvml: off silences this"
        )
    chosen: list[int] = []
    for entry in (part.strip() for part in visible.split(",")):
        index = _index_of(entry, uuids)
        if index is None:
            break  # CUDA ignores the rest of the list
        if index not in chosen:
            chosen.append(index)
    return chosen


def _index_of(entry: str, uuids: list[str]) -> int | None:
    if not entry:
        return None
    try:
        number = int(entry)
    except ValueError:
        matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
        return matches[0] if len(matches) == 1 else None
    return number if 0 <= number < len(uuids) else None


def open_nvml() -> GpuReader:
    """NVML, initialised. Raises GpuUnavailable: no binding, no library, no driver."""
    try:
        binding = importlib.import_module(BINDING)
    except ImportError:
        raise GpuUnavailable(f"NVML: the binding is not installed: {INSTALL}; {_NO_GPU}") from None
    reader = NvmlReader(binding)
    reader.call("nvmlInit")
    return reader


class NvmlReader:
    """`GpuReader` over an initialised `pynvml` module."""

    def __init__(self, binding: ModuleType) -> None:
        self.binding = binding
        self._lock = threading.Lock()  # NVML is thread-safe; one query at a time is enough
        self._closed = False

    def call(self, function: str, *args: Any) -> Any:
        """`binding.<function>(*args)`, its NVMLError as GpuUnavailable."""
        try:
            return getattr(self.binding, function)(*args)
        except self.binding.NVMLError as exc:
            raise GpuUnavailable(
                describe_nvml_error(getattr(exc, "value", None), _text(exc))
            ) from None

    def devices(self, visible: str | None) -> list[GpuDevice]:
        with self._lock:
            handles = [
                self.call("nvmlDeviceGetHandleByIndex", index)
                for index in range(self.call("nvmlDeviceGetCount"))
            ]
            uuids = [_str(self.call("nvmlDeviceGetUUID", handle)) for handle in handles]
            return [
                self._device(index, uuids[index], handles[index])
                for index in visible_indexes(visible, uuids)
            ]

    def _device(self, index: int, uuid: str, handle: object) -> GpuDevice:
        memory = self.call("nvmlDeviceGetMemoryInfo", handle)
        return GpuDevice(
            index=index,
            uuid=uuid,
            name=_str(self.call("nvmlDeviceGetName", handle)),
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            used_bytes=int(memory.used),
            processes=self._processes(handle),
        )

    def _processes(self, handle: object) -> tuple[GpuProcess, ...]:
        found: dict[int, GpuProcess] = {}
        for function in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):  # fmt: skip
            for info in self.call(function, handle) or ():
                pid = int(info.pid)
                used = info.usedGpuMemory
                if pid not in found:
                    found[pid] = GpuProcess(
                        pid, None if used is None else int(used), self._name(pid)
                    )
        return tuple(found.values())

    def _name(self, pid: int) -> str:
        try:
            return _str(self.binding.nvmlSystemGetProcessName(pid))
        except self.binding.NVMLError:  # gone, or another user's: /proc may still say
            return ""

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(self.binding.NVMLError):  # nothing left to do
                    self.binding.nvmlShutdown()


def _str(value: object) -> str:
    if isinstance(value, bytes):  # older bindings return bytes
        return value.decode("utf-8", errors="replace")
    return str(value)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # the binding's __str__ asks NVML itself, which may be gone
        return type(exc).__name__
