"""`check` while the supervisor serves: the port is taken by the supervisor's own vLLM, which
is no problem. Recognised by the state folder's run record (`supervise/run_record.py`): the
listener must be one of the recorded processes (or of their session), alive with the recorded
start time, session and executable, running this config's `server.python`. A record that is
missing, damaged or names anything else never makes a taken port look fine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from niodoo_supervisor.cli.times import at_and_ago
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.files.inputs import InputFileError, read_regular_file
from niodoo_supervisor.supervise import run_record
from niodoo_supervisor.supervise.process_tree import ProcessRecord, alive

__all__ = ["own_listener"]

_MAX_RECORD_BYTES = 1 << 20


def own_listener(config: Config) -> Callable[[int], str | None]:
    """For preflight: given the pid listening on the port, who it is when it is ours."""

    def recognise(pid: int) -> str | None:
        record = _record(config)
        if record is None:
            return None
        executable = os.path.realpath(config.server.python)
        ours = {p.pid: p for p in run_record.leftover_processes(record, executable)}
        if pid not in ours:
            return None
        since = at_and_ago(ours[pid].create_time, time.time())
        supervisor = ProcessRecord(record.supervisor_pid, record.supervisor_create_time)
        if alive(supervisor):
            return f"this supervisor's own vLLM (pid {pid}, running since {since})"
        return (
            f"a vLLM left running by this state folder's earlier supervisor (pid {pid}, "
            f"running since {since}); `run` ends it before it starts vLLM"
        )

    return recognise


def _record(config: Config) -> run_record.RunRecord | None:
    """The state folder's record; None when there is none or it is not a valid one (`run`
    reports and replaces it; `check` only does not trust it)."""
    path = config.state_dir / run_record.FILE_NAME
    try:
        raw = json.loads(read_regular_file(path, _MAX_RECORD_BYTES, follow_links=False))
        return run_record.parse(raw)
    except (InputFileError, OSError, ValueError, RecursionError, OverflowError):
        return None
