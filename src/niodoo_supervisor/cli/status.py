"""`niodoo-supervisor status`: the truth at a glance, from the running supervisor (over its
control socket) or, when it does not answer, from the status file it last wrote.

The file is read as untrusted: one that cannot be read or is not a status (not JSON, cut
short, too large, a link, a FIFO) gives one line naming it and the fix, exit 3 (the daemon
did not answer); fields of a wrong type are left out and named (`status_fields`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.control_client import ControlClient, DaemonUnreachable
from niodoo_supervisor.cli.state_location import locate
from niodoo_supervisor.cli.status_fields import checked, number
from niodoo_supervisor.cli.status_view import human
from niodoo_supervisor.cli.times import at_and_ago
from niodoo_supervisor.files.inputs import InputFileError, read_regular_file
from niodoo_supervisor.supervise.process_tree import ProcessRecord, alive
from niodoo_supervisor.supervise.status_file import STATUS_FILE

__all__ = ["show_status"]

# A status is a few KB (counted names and lines are bounded); far larger is not one.
_MAX_STATUS_BYTES = 8 << 20
_STATUS_TIMEOUT = 10.0  # the daemon answers from memory; a longer wait is a wedged loop


class _Unreadable(Exception):
    """status.json is there but is not a status: the message names the file and the fix."""


def show_status(config_path: Path | None, *, state_dir: Path | None, as_json: bool) -> int:
    """The daemon's own answer over the control socket; when it does not answer, the status
    file it last wrote, saying so."""
    where = locate(config_path, state_dir)
    notes = [where.note] if where.note else []
    now = time.time()
    try:
        status, running = _from_daemon(where.socket), True
    except DaemonUnreachable as why:
        try:
            found = _from_file(where.state_dir)
        except _Unreadable as damage:
            print(f"not running: {why}; {damage}")
            return exitcodes.NOT_RUNNING
        if found is None:
            print(f"not running: {why}, and no status in {where.state_dir}")
            return exitcodes.NOT_RUNNING
        status, written = found
        notes.append(
            f"daemon not answering ({why}); from status.json written at {at_and_ago(written, now)}"
        )
        status["source"] = STATUS_FILE
        running = _supervisor_alive(
            status.get("supervisor_pid"), status.get("supervisor_create_time")
        )
    status["supervisor_running"] = running
    if as_json:
        print(json.dumps({**status, "notes": notes}, indent=2, default=str))
        return exitcodes.OK if running else exitcodes.NOT_RUNNING
    readable, wrong = checked(status)
    if wrong:
        notes.append(f"left out, not of the type the supervisor writes: {', '.join(wrong)}")
    shown = [*(f"note:      {note}" for note in notes), *human(readable, running, now)]
    print("\n".join(shown))
    return exitcodes.OK if running else exitcodes.NOT_RUNNING


def _from_daemon(socket: Path) -> dict[str, Any]:
    with ControlClient(socket, timeout=_STATUS_TIMEOUT) as client:
        answer = client.request("GET", "/status")
    if answer.status != 200:
        raise DaemonUnreachable(f"the supervisor answered HTTP {answer.status}: {answer.message}")
    if not isinstance(answer.body, dict):
        raise DaemonUnreachable("the supervisor's answer is not a status")
    return answer.body


def _from_file(state_dir: Path) -> tuple[dict[str, Any], float] | None:
    """status.json and when it was written; None when there is none. Raises `_Unreadable`
    when it is there but is not a status."""
    path = state_dir / STATUS_FILE
    fix = "the supervisor writes it anew when it runs; remove it, or start the supervisor"
    try:
        data = read_regular_file(path, _MAX_STATUS_BYTES, follow_links=False)
        written = path.stat().st_mtime
    except InputFileError as exc:
        if exc.missing:
            return None
        raise _Unreadable(f"{path} cannot be read: {exc.reason}; {fix}") from None
    except OSError as exc:
        raise _Unreadable(f"{path} cannot be read: {exc.strerror}; {fix}") from None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise _Unreadable(f"{path} is not JSON (cut short or damaged); {fix}") from None
    if not isinstance(raw, dict):
        raise _Unreadable(f"{path} holds no status object; {fix}")
    return raw, written


def _supervisor_alive(pid: object, create_time: object) -> bool:
    """The supervisor that wrote the file still runs: its pid is alive and was started at the
    recorded time (the pid alone may have been reused). A file without the start time cannot
    tell, and says not running."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 22:
        return False
    started = number(create_time)
    return started is not None and alive(ProcessRecord(pid, started))
