"""The state file: which vLLM processes this supervisor started, so a successor can end them.

If the supervisor itself is SIGKILLed (or the machine's OOM killer picks it), vLLM keeps
running and holding GPU memory and the port. The next supervisor reads this file and ends
those processes and nothing else. The file is trusted no further than that: a recorded
process is ended only when its pid, start time, session and executable all match the live
process, that executable is the one this supervisor launches, and it is never pid 1, the
supervisor itself or one of its ancestors. A file that is not a valid record (wrong types, a
link, too large) is ignored with a warning and replaced. Whether another supervisor is running
is the lock's business (`statedir`), not this file's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import structlog

from niodoo_supervisor.files.atomic import atomic_write
from niodoo_supervisor.files.inputs import InputFileError, read_regular_file
from niodoo_supervisor.supervise.process_tree import (
    ProcessRecord,
    protected_pids,
    same_process,
    session_members,
)

__all__ = [
    "RunRecord",
    "clear",
    "from_this_boot",
    "leftover_processes",
    "parse",
    "read",
    "write",
]

log = structlog.get_logger("niodoo_supervisor")

FILE_NAME = "vllm-processes.json"
_MAX_BYTES = 1 << 20  # a real record is a few hundred bytes per process
_PID_MAX = 1 << 22  # the kernel's limit for pid_max


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
    """The record, or None when there is none or it is not a valid record (then a warning
    names the file; the caller's next write replaces it)."""
    path = state_dir / FILE_NAME
    try:
        return parse(json.loads(read_regular_file(path, _MAX_BYTES, follow_links=False)))
    except InputFileError as exc:
        if exc.missing:
            return None
        reason = exc.reason
    except (ValueError, RecursionError, OverflowError) as exc:  # JSON, UTF-8 and type errors
        reason = str(exc) or type(exc).__name__
    log.warning(
        "state_file_ignored",
        file=str(path),
        reason=reason[:200],
        action="treated as absent and replaced; no process is ended on its word",
    )
    return None


def clear(state_dir: Path) -> None:
    # Missing is fine; an unwritable folder is reported where the file is written.
    with contextlib.suppress(OSError):
        (state_dir / FILE_NAME).unlink()


def from_this_boot(record: RunRecord) -> bool:
    return abs(record.boot_time - psutil.boot_time()) < 2.0


def leftover_processes(record: RunRecord, executable: str | None = None) -> list[ProcessRecord]:
    """What is left of the recorded vLLM: the recorded processes that are still the very same
    processes (pid, start time, session and executable) and run `executable` (what this
    supervisor launches; default: the recorded leader's), plus members of that session
    started after its leader (workers spawned after the last record). The session is searched
    only when a recorded process passed those checks: otherwise its id may name a stranger's
    session now. Pid 1, this process and its ancestors are never part of the answer."""
    if not from_this_boot(record):
        return []
    expected = executable or record.leader.exe
    protected = protected_pids()

    def ours(member: ProcessRecord) -> bool:
        return (
            member.pid not in protected
            and member.exe == expected
            and same_process(member, record.sid)
        )

    found = {member.pid: member for member in (record.leader, *record.members) if ours(member)}
    if found and record.sid not in protected and record.sid != os.getsid(0):
        for member in session_members(record.sid):
            if (
                member.pid not in protected
                and member.create_time >= record.leader.create_time - 0.01
            ):
                found.setdefault(member.pid, member)
    return list(found.values())


# --- parsing: every field checked for its type; anything else is not a record ------------------


def parse(raw: object) -> RunRecord:
    """A record from its JSON value; ValueError naming the first field that is wrong."""
    top = _mapping(raw, "the record")
    members = top.get("members", [])
    if not isinstance(members, list):
        raise ValueError("members: not a list")
    record = RunRecord(
        supervisor_pid=_pid(top, "supervisor_pid"),
        sid=_pid(top, "sid"),
        leader=_process(top.get("leader"), "leader"),
        members=tuple(_process(member, f"members[{i}]") for i, member in enumerate(members)),
        boot_time=_number(top, "boot_time"),
        supervisor_create_time=_number(top, "supervisor_create_time", 0.0),
    )
    if record.sid != record.leader.pid:
        raise ValueError("sid: not the leader's pid (vLLM is started as a session leader)")
    return record


def _mapping(raw: object, where: str) -> Mapping[str, object]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: not an object")
    return raw


def _process(raw: object, where: str) -> ProcessRecord:
    fields = _mapping(raw, where)
    return ProcessRecord(
        pid=_pid(fields, "pid", where),
        create_time=_number(fields, "create_time", where=where),
        name=_text(fields, "name", where),
        exe=_text(fields, "exe", where),
    )


def _pid(raw: Mapping[str, object], key: str, where: str = "") -> int:
    value = raw.get(key)
    if type(value) is not int or not 0 < value <= _PID_MAX:
        raise ValueError(f"{where}{'.' if where else ''}{key}: not a process id")
    return value


def _number(
    raw: Mapping[str, object], key: str, default: float | None = None, *, where: str = ""
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}{'.' if where else ''}{key}: not a number")
    return float(value)


def _text(raw: Mapping[str, object], key: str, where: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: not a string")
    return value
