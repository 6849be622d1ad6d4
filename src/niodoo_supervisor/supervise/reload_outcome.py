"""A reload's outcome in one place: what it did (refused, unchanged, applied at once, a
restart of vLLM), recorded in the status board's `last_reload` (status.json) and handed to
every control API caller waiting for it (`niodoo-supervisor reload`, systemd's ExecReload)."""

from __future__ import annotations

from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.reload_diff import ConfigDiff, KeyClass
from niodoo_supervisor.supervise.reporter import Reporter

__all__ = ["reload_outcome", "settle_reload"]


def reload_outcome(
    change: ConfigDiff | None,
    errors: list[str],
    *,
    vllm_running: bool,
    restart: str | None = None,
    pending: str | None = None,
    live: CommandResult | None = None,
) -> CommandResult:
    """What a reload did, for the operator: `change` None means refused with `errors`;
    `restart` is the reason vLLM restarts now, `pending` the status of a restart held for a
    maintenance window, `live` what the live adapter change did (a failed one fails the
    reload: the previous adapters keep serving)."""
    if change is None:
        first = errors[0] if errors else "no reason given"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return CommandResult(
            False,
            f"refused, the running config stays: {first}{more}",
            {"outcome": "refused", "problems": list(errors)},
        )
    details: dict[str, object] = {"changes": [each.describe() for each in change.changes]}
    if live is not None and not live.ok:
        # First: whatever else the reload did, the adapters it asked for are not served.
        details["keys"] = change.keys(KeyClass.LIVE)
        details["live_adapters"] = live.message
        if pending:
            details["pending"] = pending
        return CommandResult(
            False,
            f"the live adapter change failed, the previous adapters keep serving: {live.message}",
            {"outcome": "live_failed", **details},
        )
    if change.unchanged and live is not None:
        outcome, text = (
            "unchanged",
            "taken: the config is unchanged; the served adapters made its own again",
        )
    elif change.unchanged:
        outcome, text = "unchanged", "taken: the config is unchanged, nothing to do"
    elif restart is not None:
        details["keys"] = change.keys(KeyClass.RESTART)
        outcome, text = "restart_now", f"taken: restarting vLLM now ({restart})"
    elif change.needs_restart and not vllm_running:
        details["keys"] = change.keys(KeyClass.RESTART)
        outcome, text = "next_start", f"taken: vLLM starts with it next ({change.restart_reason()})"
    elif change.needs_restart and pending:
        details["keys"] = change.keys(KeyClass.RESTART)
        outcome, text = "restart_pending", f"taken: {pending}"
    else:
        keys = change.keys(KeyClass.SUPERVISOR) + change.keys(KeyClass.LIVE)
        details["keys"] = keys
        outcome, text = (
            "applied",
            f"taken: applied {', '.join(keys) or 'nothing'} without a restart",
        )
    if live is not None:  # adapters loaded or unloaded live, with or without a config change
        details["live_adapters"] = live.message
        text += f" ({live.message})"
    if pending and outcome != "restart_pending":
        details["pending"] = pending
        text += f"; {pending}"
    not_applied = change.keys(KeyClass.DAEMON)
    if not_applied:
        details["not_applied"] = not_applied
        text += f"; {', '.join(not_applied)} wait for `systemctl restart`"
    return CommandResult(True, text, {"outcome": outcome, **details})


def settle_reload(
    result: ReloadResult,
    change: ConfigDiff | None,
    reporter: Reporter,
    *,
    vllm_running: bool,
    restart: str | None = None,
    pending: str | None = None,
    live: CommandResult | None = None,
) -> CommandResult:
    """Record the outcome in status.json, then answer whoever waits for it (in that order: a
    `status` right after `reload` shows it)."""
    outcome = reload_outcome(
        change,
        result.errors,
        vllm_running=vllm_running,
        restart=restart,
        pending=pending,
        live=live,
    )
    reporter.status.last_reload = {
        "at": reporter.clock.wall(),
        "ok": outcome.ok,
        "summary": outcome.message,
        "problems": list(result.errors),
    }
    reporter.write_status()
    for reply in result.replies:
        if not reply.done():  # done: the caller went away (its request was cancelled)
            reply.set_result(outcome)
    return outcome
