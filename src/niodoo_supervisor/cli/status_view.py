"""`niodoo-supervisor status` for a person: the most important first (state and since when,
what is served, the last trouble and when), then what waits (a pending restart, the windows, a
drain), vLLM and its last check, and the events grouped (trouble, requests, start-up) each
with its count and last time. Times read "12:03:04, 5 min ago". Works on any JSON: the status
is checked by `status_fields` first, and every nested value is read defensively.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from niodoo_supervisor.cli.status_fields import count, mapping, number, shown, text_list
from niodoo_supervisor.cli.times import at_and_ago, duration
from niodoo_supervisor.logs.builtin_rules import (
    BUILTIN_RULES,
    IGNORED_FIELDS_RULE,
    LORA_GUARD_RULES,
    UNKNOWN_MODEL_RULE,
)
from niodoo_supervisor.logs.request_mistakes import request_mistakes
from niodoo_supervisor.logs.rule_types import Severity
from niodoo_supervisor.supervise.role_status import role_line

__all__ = ["human"]

_PAD = " " * 11
_LISTED = 20  # client-chosen names listed; the rest are counted ("and 180 more")
_SEVERITY = {rule.name: rule.severity for rule in BUILTIN_RULES}
# Rules about what clients sent: summed up on the `requests:` line, not trouble of vLLM's.
_REQUEST_RULES = frozenset((IGNORED_FIELDS_RULE, UNKNOWN_MODEL_RULE, *LORA_GUARD_RULES))
_VERDICTS = {
    "no_effect": "has NO EFFECT (serves the base model's output)",
    "failed": "could not be probed for an effect",
}
_EXCEPTION = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")


def human(status: Mapping[str, Any], running: bool, now: float) -> list[str]:
    lines = [
        _state_line(status, running, now),
        f"serving:   {shown(status.get('served_model') or '?')} + adapters {_adapters(status)}",
    ]
    if (role := role_line(status.get("role"))) is not None:
        lines.append(f"role:      {shown(role, 400)}")  # absent on a single host
    lines.append(f"trouble:   {_last_trouble(status, now)}")
    mistakes = request_mistakes(mapping(status.get("events")))
    if mistakes:
        lines.append(f"requests:  {'; '.join(mistakes)}")
    lines.extend(_operations_lines(status, now))
    lines.append(_vllm_line(status))
    lines.extend(_check_line(status, now))
    lines.extend(_reload_lines(status.get("last_reload"), now))
    lines.extend(_event_lines(mapping(status.get("events")), now))
    lines.extend(_crash_lines(status.get("last_crash"), now))
    dropped = count(status.get("log_dropped_bytes"))
    if dropped:
        lines.append(f"log:       {dropped} bytes of vLLM output dropped (slow log sink)")
    notify = count(status.get("notify_dropped"))
    if notify:
        lines.append(
            f"systemd:   {notify} notifications dropped (systemd was not reading its notify socket)"
        )
    return lines


def _when(value: object, now: float) -> str:
    moment = number(value)
    return "unknown time" if moment is None else at_and_ago(moment, now)


def _state_line(status: Mapping[str, Any], running: bool, now: float) -> str:
    state = shown(status.get("state") or "unknown", 40)
    if not running:
        state = f"not running (last state {state})"
    since = number(status.get("since"))
    when = f" since {at_and_ago(since, now)}" if since is not None else ""
    phase = status.get("phase")
    if running and status.get("state") == "STARTING" and isinstance(phase, str) and phase:
        when += f" (phase {shown(phase, 40)})"  # how far vLLM's start got
    reason = shown(status.get("reason") or "", 200)
    return f"state:     {state}{when}" + (f": {reason}" if reason else "")


def _adapters(status: Mapping[str, Any]) -> str:
    live_only = set(text_list(status.get("adapters_live_only")))
    effects = mapping(status.get("adapter_effects"))
    names = [
        shown(name, 64)
        + (" (live only, not in the YAML)" if name in live_only else "")
        + (
            " (NO EFFECT: serves the base model's output)"
            if mapping(effects.get(name)).get("verdict") == "no_effect"
            else ""
        )
        for name in text_list(status.get("adapters"))
    ]
    return ", ".join(names) or "(none)"


def _last_trouble(status: Mapping[str, Any], now: float) -> str:
    """The newest of: a crash, a failed check, a refused reload, an adapter without effect,
    a warning (or worse) event of vLLM's."""
    found: list[tuple[float, str]] = []

    def add(at: object, what: str) -> None:
        moment = number(at)
        if moment is not None:
            found.append((moment, what))

    crash = mapping(status.get("last_crash"))
    add(crash.get("at"), f"vLLM crashed: {shown(crash.get('reason') or '?')}")
    check = mapping(status.get("last_check"))
    if check and check.get("ok") is not True:
        add(check.get("at"), f"check failed: {shown(check.get('reason') or '?')}")
    reload = mapping(status.get("last_reload"))
    if reload and reload.get("ok") is not True:
        first = (text_list(reload.get("problems")) or ["no reason given"])[0]
        add(reload.get("at"), f"reload refused: {shown(first)}")
    for name, effect in mapping(status.get("adapter_effects")).items():
        said = _VERDICTS.get(str(mapping(effect).get("verdict")))
        if said:
            add(mapping(effect).get("at"), f"adapter {shown(name, 64)} {said}")
    for name, seen in _rules(mapping(status.get("events"))):
        if _is_trouble(name):
            add(seen.get("last_time"), f"{shown(name, 64)} x{count(seen.get('count')) or '?'}")
    if not found:
        return "none recorded"
    at, what = max(found, key=lambda item: item[0])
    return f"{at_and_ago(at, now)}: {what}"


def _rules(events: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(str(name), mapping(seen)) for name, seen in mapping(events.get("rules")).items()]


def _is_trouble(rule: str) -> bool:
    # An operator's own rule is not in the table: it was written because it matters.
    severity = _SEVERITY.get(rule, Severity.WARNING)
    return rule not in _REQUEST_RULES and severity is not Severity.INFO


def _operations_lines(status: Mapping[str, Any], now: float) -> list[str]:
    """A restart waiting for a window, the windows, a drain under way."""
    lines = []
    pending = status.get("pending_restart")
    if isinstance(pending, dict):
        lines.append(
            f"pending:   restart at {shown(pending.get('at'))} ({shown(pending.get('window'))}): "
            f"{shown(pending.get('reason'), 200)}"
        )
    windows = status.get("maintenance")
    if isinstance(windows, dict):
        now_text = "open now" if windows.get("open_now") is True else "closed now"
        lines.append(f"windows:   {now_text}; next opening {shown(windows.get('next_opening'))}")
    drain = status.get("drain")
    if isinstance(drain, dict):
        since = number(drain.get("since"))
        took = duration(now - since) if since is not None else "?"
        lines.append(
            f"draining:  {shown(drain.get('phase'))} for {took}: {shown(drain.get('running'))} "
            f"running, {shown(drain.get('waiting'))} waiting (timeout {shown(drain.get('timeout'))}s)"
        )
    return lines


def _vllm_line(status: Mapping[str, Any]) -> str:
    pid = count(status.get("vllm_pid"))
    version = status.get("vllm_version")
    starts, restarts = count(status.get("starts")), count(status.get("restarts"))
    parts = [
        f"pid {pid}" if pid is not None else "not running",
        f"version {shown(version, 40)}" if isinstance(version, str) else "version unknown",
    ]
    if starts is not None:
        parts.append(f"{starts} start(s), {restarts if restarts is not None else '?'} restart(s)")
    last_exit = status.get("last_exit")
    if isinstance(last_exit, str) and last_exit:
        parts.append(f"last exit: {shown(last_exit)}")
    return "vLLM:      " + "; ".join(parts)


def _check_line(status: Mapping[str, Any], now: float) -> list[str]:
    check = mapping(status.get("last_check"))
    if not check:
        return []
    verdict = "ok" if check.get("ok") is True else "FAILED"
    latency = number(check.get("latency_s"))
    took = f" in {latency:g}s" if latency is not None else ""
    reason = shown(check.get("reason") or "")
    said = f" ({reason})" if reason and reason != "ok" else ""
    return [f"last check: {verdict} at {_when(check.get('at'), now)}{took}{said}"]


def _reload_lines(last: object, now: float) -> list[str]:
    if not isinstance(last, dict):
        return []
    when = _when(last.get("at"), now)
    if last.get("ok") is True:
        return [f"reload:    {shown(last.get('summary'), 200)} ({when})"]
    problems = text_list(last.get("problems")) or ["no reason given"]
    return [
        f"reload:    serving the previous config; the new one was refused: "
        f"{shown(problems[0], 200)} ({when})",
        *(f"{_PAD}also: {shown(problem, 200)}" for problem in problems[1:]),
    ]


def _event_lines(events: Mapping[str, Any], now: float) -> list[str]:
    """Trouble first, newest first, each with its last line; then what clients sent; then the
    start-up and other info events on one line."""
    rules = sorted(
        _rules(events), key=lambda item: number(item[1].get("last_time")) or 0.0, reverse=True
    )
    trouble = [(n, s) for n, s in rules if _is_trouble(n)]
    requests = [(n, s) for n, s in rules if n in _REQUEST_RULES]
    info = [(n, s) for n, s in reversed(rules) if not _is_trouble(n) and n not in _REQUEST_RULES]
    rows = [
        f"{shown(name, 64)} x{count(seen.get('count')) or '?'}, last {_when(seen.get('last_time'), now)}: "
        f"{shown(str(seen.get('last_line') or '').strip())}"
        for name, seen in (*trouble, *requests)
    ]
    if info:
        last = max((number(seen.get("last_time")) or 0.0 for _, seen in info), default=0.0)
        named = ", ".join(f"{shown(n, 64)} x{count(s.get('count')) or '?'}" for n, s in info)
        rows.append(f"info: {named} (last {_when(last or None, now)})")
    lines = [("events:    " if i == 0 else _PAD) + row for i, row in enumerate(rows)]
    for title, key in (
        ("ignored request fields", "ignored_fields"),
        ("unknown models requested", "unknown_models"),
    ):
        counts = sorted(mapping(events.get(key)).items())
        if counts:
            listed = ", ".join(f"{shown(name, 64)} x{shown(n)}" for name, n in counts[:_LISTED])
            more = f" and {len(counts) - _LISTED} more" if len(counts) > _LISTED else ""
            lines.append(f"{title}: {listed}{more}")
    return lines


def _crash_lines(crash: object, now: float) -> list[str]:
    if not isinstance(crash, dict):
        return []
    rule = crash.get("rule")
    by = f" (rule {shown(rule, 64)})" if isinstance(rule, str) and rule else ""
    lines = [
        f"last crash: {_when(crash.get('at'), now)}: {shown(crash.get('reason') or '?', 200)}{by}"
    ]
    told = [line for line in text_list(crash.get("lines")) if _EXCEPTION.match(line)]
    if told:
        lines.append(f"{_PAD} {shown(told[-1].strip(), 200)}")
    return lines
