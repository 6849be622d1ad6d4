"""`niodoo-supervisor status`: the truth at a glance, from the running supervisor (over its
control socket) or, when it does not answer, from the status file it last wrote."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.control_client import ControlClient, DaemonUnreachable
from niodoo_supervisor.cli.state_location import locate
from niodoo_supervisor.files.inputs import InputFileError, read_regular_file
from niodoo_supervisor.logs.request_mistakes import request_mistakes
from niodoo_supervisor.supervise.process_tree import ProcessRecord, alive
from niodoo_supervisor.supervise.status_file import STATUS_FILE

__all__ = ["show_status"]

_MAX_STATUS_BYTES = 64 << 20
_STATUS_TIMEOUT = 10.0  # the daemon answers from memory; a longer wait is a wedged loop


def show_status(config_path: Path | None, *, state_dir: Path | None, as_json: bool) -> int:
    """The daemon's own answer over the control socket; when it does not answer, the status
    file it last wrote, saying so."""
    where = locate(config_path, state_dir)
    notes = [where.note] if where.note else []
    try:
        status, running = _from_daemon(where.socket), True
    except DaemonUnreachable as why:
        found = _from_file(where.state_dir)
        if found is None:
            print(f"not running: {why}, and no status in {where.state_dir}")
            return exitcodes.NOT_RUNNING
        status, written = found
        stamp = datetime.fromtimestamp(written).astimezone().isoformat(timespec="seconds")
        notes.append(f"daemon not answering ({why}); from status.json written at {stamp}")
        status["source"] = STATUS_FILE
        running = _supervisor_alive(
            status.get("supervisor_pid"), status.get("supervisor_create_time")
        )
    status["supervisor_running"] = running
    if as_json:
        print(json.dumps({**status, "notes": notes}, indent=2, default=str))
    else:
        print("\n".join([*(f"note:      {note}" for note in notes), _human(status, running)]))
    return exitcodes.OK if running else exitcodes.NOT_RUNNING


def _from_daemon(socket: Path) -> dict[str, Any]:
    with ControlClient(socket, timeout=_STATUS_TIMEOUT) as client:
        answer = client.request("GET", "/status")
    if answer.status != 200:
        raise DaemonUnreachable(f"the supervisor answered HTTP {answer.status}: {answer.message}")
    return answer.body


def _from_file(state_dir: Path) -> tuple[dict[str, Any], float] | None:
    """status.json and when it was written; None when there is none to read."""
    path = state_dir / STATUS_FILE
    try:
        data = read_regular_file(path, _MAX_STATUS_BYTES, follow_links=False)
        raw = json.loads(data)
        written = path.stat().st_mtime
    except (InputFileError, OSError, ValueError, RecursionError):
        return None
    return (raw, written) if isinstance(raw, dict) else None


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
    effects = status.get("adapter_effects") or {}
    no_effect = {name for name, e in effects.items() if (e or {}).get("verdict") == "no_effect"}
    names = [
        name
        + (" (live only, not in the YAML)" if name in live_only else "")
        + (" (NO EFFECT: serves the base model's output)" if name in no_effect else "")
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
    mistakes = request_mistakes(status.get("events") or {})
    if mistakes:
        lines.append(f"requests:  {'; '.join(mistakes)}")
    check = status.get("last_check")
    if check:
        lines.append(
            f"last check: {'ok' if check.get('ok') else 'FAILED'} {time.time() - check['at']:.0f}s ago in {check.get('latency_s')}s ({check.get('reason')})"
        )
    lines.extend(_operations_lines(status))
    events = status.get("events") or {}
    for name, seen in sorted((events.get("rules") or {}).items()):
        lines.append(
            f"event:     {name} x{seen.get('count')}: {seen.get('last_line', '').strip()[:160]}"
        )
    for field_name, count in sorted((events.get("ignored_fields") or {}).items()):
        lines.append(f"ignored request field: {field_name} x{count}")
    for model, count in sorted((events.get("unknown_models") or {}).items()):
        lines.append(f"unknown model requested: {model} x{count}")
    lines.extend(_reload_lines(status.get("last_reload")))
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


def _operations_lines(status: dict[str, Any]) -> list[str]:
    """A restart waiting for a window, the windows, a drain under way."""
    lines = []
    pending = status.get("pending_restart")
    if isinstance(pending, dict):
        lines.append(
            f"pending:   restart at {pending.get('at')} ({pending.get('window')}): {pending.get('reason')}"
        )
    windows = status.get("maintenance")
    if isinstance(windows, dict):
        now = "open now" if windows.get("open_now") else "closed now"
        lines.append(f"windows:   {now}; next opening {windows.get('next_opening')}")
    drain = status.get("drain")
    if isinstance(drain, dict):
        since = time.time() - float(drain.get("since") or time.time())
        lines.append(
            f"draining:  {drain.get('phase')} for {since:.0f}s: {drain.get('running')} running, {drain.get('waiting')} waiting (timeout {drain.get('timeout')}s)"
        )
    return lines


def _reload_lines(last: Any) -> list[str]:
    if not isinstance(last, dict):
        return []
    ago = f"{time.time() - float(last.get('at') or time.time()):.0f}s ago"
    if last.get("ok"):
        return [f"reload:    {last.get('summary')} ({ago})"]
    problems = last.get("problems") or ["no reason given"]
    return [
        f"reload:    serving the previous config; the new one was refused: {problems[0]} ({ago})",
        *(f"           also: {problem}" for problem in problems[1:]),
    ]
