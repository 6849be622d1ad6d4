"""`niodoo-supervisor status`: the truth at a glance, from the running supervisor's status file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.files.inputs import InputFileError, read_regular_file
from niodoo_supervisor.supervise.process_tree import ProcessRecord, alive
from niodoo_supervisor.supervise.status_file import STATUS_FILE

__all__ = ["show_status"]

_MAX_STATUS_BYTES = 64 << 20


def show_status(config_path: Path, *, as_json: bool) -> int:
    config, problems = load_config(config_path)
    if config is None:
        for problem in problems:
            print(problem.format())
        return exitcodes.CONFIG
    try:
        data = read_regular_file(
            config.state_dir / STATUS_FILE, _MAX_STATUS_BYTES, follow_links=False
        )
        raw = json.loads(data)
    except (InputFileError, ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        print(f"not running: no status in {config.state_dir}")
        return exitcodes.NOT_RUNNING
    status: dict[str, Any] = raw
    running = _supervisor_alive(status.get("supervisor_pid"), status.get("supervisor_create_time"))
    status["supervisor_running"] = running
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        print(_human(status, running))
    return exitcodes.OK if running else exitcodes.NOT_RUNNING


def _supervisor_alive(pid: object, create_time: object) -> bool:
    """The supervisor that wrote the file still runs: its pid is alive and was started at the
    recorded time (the pid alone may have been reused). A file without the start time cannot
    tell, and says not running."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not isinstance(create_time, (int, float)) or isinstance(create_time, bool):
        return False
    return alive(ProcessRecord(pid, float(create_time)))


def _adapters(status: dict[str, Any]) -> str:
    live_only = set(status.get("adapters_live_only") or [])
    names = [
        f"{name} (live only, not in the YAML)" if name in live_only else name
        for name in status.get("adapters") or []
    ]
    return ", ".join(names) or "(none)"


def _human(status: dict[str, Any], running: bool) -> str:
    since = time.time() - float(status.get("since") or time.time())
    state = status.get("state") if running else f"not running (last state {status.get('state')})"
    lines = [
        f"state:     {state} for {since:.0f}s: {status.get('reason', '')}",
        f"vLLM:      pid {status.get('vllm_pid')} version {status.get('vllm_version')}; starts {status.get('starts')}, restarts {status.get('restarts')}",
        f"serving:   {status.get('served_model')} + adapters {_adapters(status)}",
    ]
    check = status.get("last_check")
    if check:
        lines.append(
            f"last check: {'ok' if check.get('ok') else 'FAILED'} {time.time() - check['at']:.0f}s ago ({check.get('reason')})"
        )
    events = status.get("events") or {}
    for name, seen in sorted((events.get("rules") or {}).items()):
        lines.append(
            f"event:     {name} x{seen.get('count')}: {seen.get('last_line', '').strip()[:160]}"
        )
    for field_name, count in sorted((events.get("ignored_fields") or {}).items()):
        lines.append(f"ignored request field: {field_name} x{count}")
    crash = status.get("last_crash")
    if crash:
        lines.append(f"last crash: {crash.get('reason')}")
    if status.get("log_dropped_bytes"):
        lines.append(
            f"log:       {status['log_dropped_bytes']} bytes of vLLM output dropped (slow log sink)"
        )
    if status.get("notify_dropped"):
        lines.append(
            f"systemd:   {status['notify_dropped']} notifications dropped (systemd was not reading its notify socket)"
        )
    return "\n".join(lines)
