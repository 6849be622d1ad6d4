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

__all__ = ["RunRecord", "clear", "leftover_processes", "read", "write"]

FILE_NAME = "vllm-processes.json"


@dataclass(frozen=True)
class RunRecord:
    supervisor_pid: int
    sid: int
    leader: ProcessRecord
    members: tuple[ProcessRecord, ...] = field(default=())
    port: int = 0


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
            port=int(raw.get("port", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / FILE_NAME).unlink()


def leftover_processes(record: RunRecord) -> list[ProcessRecord]:
    """What is left of the recorded vLLM: the recorded processes that are still the very same
    processes (pid and start time), plus members of its session started after its leader
    (workers spawned after the last record), unless the session id now belongs to a new
    session leader that reused the pid."""
    found = {member.pid: member for member in (record.leader, *record.members) if alive(member)}
    if not _session_id_reused(record):
        for member in session_members(record.sid):
            if member.create_time >= record.leader.create_time - 0.01:
                found.setdefault(member.pid, member)
    return list(found.values())


def _session_id_reused(record: RunRecord) -> bool:
    try:
        holder = psutil.Process(record.sid)
        return abs(holder.create_time() - record.leader.create_time) >= 0.01
    except psutil.Error:
        return False
