"""The state file: which vLLM processes this supervisor started, so a successor can end them.

If the supervisor itself is SIGKILLed (or the machine's OOM killer picks it), vLLM keeps
running and holding GPU memory and the port. The next supervisor reads this file and ends
exactly those processes (pid and start time must both match) and nothing else.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from .fsutil import atomic_write
from .process import ProcessRecord, alive, session_members

__all__ = [
    "RunRecord",
    "clear",
    "from_this_boot",
    "leftover_processes",
    "read",
    "supervisor_alive",
    "write",
]

FILE_NAME = "vllm-processes.json"


@dataclass(frozen=True)
class RunRecord:
    supervisor_pid: int
    sid: int
    leader: ProcessRecord
    members: tuple[ProcessRecord, ...] = field(default=())
    # Pids and session ids start over at boot: a record from an earlier boot names nothing.
    boot_time: float = field(default_factory=psutil.boot_time, kw_only=True)
    supervisor_create_time: float = field(default=0.0, kw_only=True)


def write(state_dir: Path, record: RunRecord) -> None:
    atomic_write(state_dir / FILE_NAME, json.dumps(asdict(record)))


def read(state_dir: Path) -> RunRecord | None:
    try:
        raw = json.loads((state_dir / FILE_NAME).read_text())
        return RunRecord(
            supervisor_pid=int(raw["supervisor_pid"]),
            sid=int(raw["sid"]),
            leader=ProcessRecord(**raw["leader"]),
            members=tuple(ProcessRecord(**member) for member in raw.get("members", [])),
            boot_time=float(raw["boot_time"]),
            supervisor_create_time=float(raw.get("supervisor_create_time", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(state_dir: Path) -> None:
    # Missing is fine; an unwritable folder is reported where the file is written.
    with contextlib.suppress(OSError):
        (state_dir / FILE_NAME).unlink()


def from_this_boot(record: RunRecord) -> bool:
    return abs(record.boot_time - psutil.boot_time()) < 2.0


def leftover_processes(record: RunRecord) -> list[ProcessRecord]:
    """What is left of the recorded vLLM: the recorded processes that are still the very same
    processes (pid and start time), plus members of its session started after its leader
    (workers spawned after the last record). The session is searched only when at least one
    recorded process is still alive: otherwise its id may name a stranger's session now."""
    if not from_this_boot(record):
        return []
    found = {member.pid: member for member in (record.leader, *record.members) if alive(member)}
    if found:
        for member in session_members(record.sid):
            if member.create_time >= record.leader.create_time - 0.01:
                found.setdefault(member.pid, member)
    return list(found.values())


def supervisor_alive(record: RunRecord) -> bool:
    """The supervisor that wrote the record is still running (same pid and start time)."""
    supervisor = ProcessRecord(record.supervisor_pid, record.supervisor_create_time)
    return from_this_boot(record) and alive(supervisor)
