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

- `holders`: every live process whose command line (or its session leader's) contains
  `cmdline` (and whose /proc comm is `comm`, when given) holds `mib` on `device`, and is still listed with that
  memory for `release_s` seconds after it died (vLLM's memory freed late). The death is seen
  at the first call after it, so polls must be frequent for the figure to be exact. What was
  seen is kept in `<script>.state` (the driver outlives a process: a supervisor started after
  a SIGKILLed one still sees its vLLM's memory freed late).
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


def _cmdline(pid: int | str) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _live_matches(entry: dict[str, Any]) -> list[int]:
    """Live processes whose command line, or their session leader's, contains the entry's
    (vLLM's engine and workers retitle themselves; the API server leads their session)."""
    found = []
    for folder in Path("/proc").iterdir():
        if not folder.name.isdigit():
            continue
        pid = int(folder.name)
        try:
            comm = (folder / "comm").read_text().strip()
            leader = os.getsid(pid)
        except OSError:
            continue
        if entry.get("comm") not in (None, comm) or not _alive(pid):
            continue
        if entry["cmdline"] in _cmdline(pid) or entry["cmdline"] in _cmdline(leader):
            found.append(pid)
    return found


def _state_path() -> Path | None:
    path = os.environ.get("FAKE_NVML_SCRIPT")
    return Path(path + ".state") if path else None


def _load_state() -> dict[str, dict[str, Any]]:
    path = _state_path()
    if path is None or not path.exists():
        return {}
    return dict(json.loads(path.read_text()))


def _save_state(seen: dict[str, dict[str, Any]]) -> None:
    path = _state_path()
    if path is not None:
        temporary = path.with_name(f"{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(seen))
        temporary.replace(path)


def _holdings(script: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(device, pid, MiB) of everything holding memory now."""
    now = time.time()  # wall time: the state is shared by processes
    held = []
    seen = _load_state()  # pid -> {"cmdline": the holder's, "died": when first seen dead}
    holders = script.get("holders", [])
    for entry in holders:
        for pid in _live_matches(entry):
            seen.setdefault(str(pid), {"cmdline": entry["cmdline"], "died": None})
    for key, note in list(seen.items()):
        # The script as it is now (a test may rewrite it), for the holder seen then.
        entry = next((e for e in holders if e["cmdline"] == note["cmdline"]), None)
        if entry is None:
            del seen[key]
            continue
        if note["died"] is None and not _alive(int(key)):
            note["died"] = now
        if note["died"] is not None and now - note["died"] >= float(entry.get("release_s", 0)):
            del seen[key]
            continue
        held.append((int(entry.get("device", 0)), int(key), int(entry["mib"])))
    _save_state(seen)
    for entry in script.get("foreign", []):
        until = entry.get("until_file")
        if until and Path(until).exists():
            continue
        if "for_s" in entry and time.monotonic() - _IMPORTED >= float(entry["for_s"]):
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
