"""A scripted stand-in for `pynvml` (nvidia-ml-py): put this folder first on PYTHONPATH.

It has the calls the supervisor makes and the binding's exception shape (`NVMLError` with
`.value`, one subclass per code, such as `NVMLError_LibraryNotFound`). What it reports comes
from the JSON file named by `FAKE_NVML_SCRIPT` (no file: one idle 24 GiB GPU), read on every
call, so a test may rewrite it:

    {"devices": [{"name": "NVIDIA A10", "total_mib": 24576, "reserved_mib": 300}],
     "holders": [{"cmdline": "/tmp/x/model", "comm": "VLLM::Worker", "mib": 20000,
                  "device": 0, "release_s": 3}],
     "foreign": [{"pid": 4242, "name": "python", "mib": 21000, "device": 0,
                  "until_file": "/tmp/x/freed", "for_s": 60}],
     "init_error": 12, "lost_file": "/tmp/x/lost", "unknown_sizes": false}

- `holders`: every live process whose command line contains `cmdline` (and whose
  /proc comm is `comm`, when given) holds `mib` on `device`, and is still listed with that
  memory for `release_s` seconds after it died (vLLM's memory freed late). The death is seen
  at the first call after it, so polls must be frequent for the figure to be exact.
- `foreign`: a pid (need not exist) holding `mib` until `until_file` exists or `for_s`
  seconds have passed since this module was imported.
- `init_error`: nvmlInit raises this code (12 library not found, 9 driver not loaded).
- `lost_file`: once it exists, every call raises GPU_IS_LOST (15).
- `unknown_sizes`: processes report `usedGpuMemory` None, as some drivers do.
"""

from __future__ import annotations

import json
import os
import string
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

MIB = 1 << 20
_IMPORTED = time.monotonic()
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999
_TEXTS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    """As in the binding: `NVMLError(code)` is an instance of the code's subclass."""

    _valClassMapping: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        typ = cls._valClassMapping.get(value, cls) if cls is NVMLError else cls
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _TEXTS.get(self.value, "Unknown Error")


def _error_classes() -> None:
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        value = getattr(module, name)
        title = string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        cls = type("NVMLError_" + title, (NVMLError,), {"__new__": _new_for(value)})
        setattr(module, cls.__name__, cls)
        NVMLError._valClassMapping[value] = cls


def _new_for(value: int) -> Any:
    def new(typ: type[NVMLError], *args: object) -> NVMLError:
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    return new


_error_classes()

# --- the script ------------------------------------------------------------------------------

_state = {"initialised": 0}
_deaths: dict[int, float] = {}  # holder pid -> when it was first seen dead
_seen: dict[int, dict[str, Any]] = {}  # holder pid -> its holder entry


def _script() -> dict[str, Any]:
    path = os.environ.get("FAKE_NVML_SCRIPT")
    if not path:
        return {}
    return dict(json.loads(Path(path).read_text()))


def _check(script: dict[str, Any] | None = None) -> dict[str, Any]:
    script = _script() if script is None else script
    if not _state["initialised"]:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    lost = script.get("lost_file")
    if lost and Path(lost).exists():
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return script


def _devices(script: dict[str, Any]) -> list[dict[str, Any]]:
    return list(script.get("devices") or [{"name": "NVIDIA Fake", "total_mib": 24576}])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _live_matches(entry: dict[str, Any]) -> list[int]:
    found = []
    for folder in Path("/proc").iterdir():
        if not folder.name.isdigit():
            continue
        try:
            cmdline = (
                (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            comm = (folder / "comm").read_text().strip()
        except OSError:
            continue
        if (
            entry["cmdline"] in cmdline
            and entry.get("comm") in (None, comm)
            and _alive(int(folder.name))
        ):
            found.append(int(folder.name))
    return found


def _holdings(script: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(device, pid, MiB) of everything holding memory now."""
    now = time.monotonic()
    held = []
    holders = script.get("holders", [])
    for entry in holders:
        for pid in _live_matches(entry):
            _seen[pid] = entry
    for pid, seen in list(_seen.items()):
        # The script as it is now (a test may rewrite it), for the holder seen then.
        entry = next((e for e in holders if e["cmdline"] == seen["cmdline"]), seen)
        if not _alive(pid):
            died = _deaths.setdefault(pid, now)
            if now - died >= float(entry.get("release_s", 0)):
                del _seen[pid]
                continue
        held.append((int(entry.get("device", 0)), pid, int(entry["mib"])))
    for entry in script.get("foreign", []):
        until = entry.get("until_file")
        if until and Path(until).exists():
            continue
        if "for_s" in entry and now - _IMPORTED >= float(entry["for_s"]):
            continue
        held.append((int(entry.get("device", 0)), int(entry["pid"]), int(entry["mib"])))
    return held


# --- the binding's calls ---------------------------------------------------------------------


class _Memory:
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, max(0, total - used)


class _Process:
    def __init__(self, pid: int, used: int | None) -> None:
        self.pid, self.usedGpuMemory = pid, used
        self.gpuInstanceId = self.computeInstanceId = 0xFFFFFFFF


def nvmlInit() -> None:
    code = _script().get("init_error")
    if code:
        raise NVMLError(int(code))
    _state["initialised"] += 1


def nvmlShutdown() -> None:
    _check()
    _state["initialised"] -= 1


def nvmlDeviceGetCount() -> int:
    return len(_devices(_check()))


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_devices(_check())):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return index


def nvmlDeviceGetUUID(handle: int) -> str:
    device = _devices(_check())[handle]
    return str(device.get("uuid", f"GPU-{handle:08x}-fake-0000-0000-000000000000"))


def nvmlDeviceGetName(handle: int) -> str:
    return str(_devices(_check())[handle].get("name", "NVIDIA Fake"))


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    script = _check()
    device = _devices(script)[handle]
    used = sum(mib for where, _, mib in _holdings(script) if where == handle)
    return _Memory(
        int(device["total_mib"]) * MIB, (used + int(device.get("reserved_mib", 0))) * MIB
    )


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[_Process]:
    script = _check()
    unknown = bool(script.get("unknown_sizes"))
    return [
        _Process(pid, None if unknown else mib * MIB)
        for where, pid, mib in _holdings(script)
        if where == handle
    ]


def nvmlDeviceGetGraphicsRunningProcesses(handle: int) -> list[_Process]:
    _check()
    return []


def nvmlSystemGetProcessName(pid: int) -> str:
    script = _check()
    for entry in script.get("foreign", []):
        if int(entry["pid"]) == pid and entry.get("name"):
            return str(entry["name"])
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        raise NVMLError(NVML_ERROR_NOT_FOUND) from None
