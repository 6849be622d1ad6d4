"""When a planned restart of vLLM happens: at once, or held for the next maintenance window
(a pending restart), and the config the running vLLM was launched with, kept apart from the
config of the next start.

The rules (README's Configuration section says the same for operators):

- A change that needs a restart, while a vLLM serves (READY or UNHEALTHY) and windows are
  configured and none is open, becomes a pending restart: the old vLLM keeps serving, the
  status (`pending_restart`, STATUS=) says what, why and when. At the window's opening it is
  carried out once, as a planned restart. No windows, or one open now: at once, as before.
  A vLLM still starting serves nobody yet: a change restarts it at once.
- A reload is compared with the RUNNING config for what needs a restart: a reload back to it
  cancels the pending restart; another restart-needing change replaces what is pending.
  Settings of the supervisor itself are compared with the config in effect (the newest).
- A crash (any unplanned restart) restarts at once with the newest config, which carries out
  and so clears what was pending (the log says so).
- `restart --now` carries out the pending restart now (or a fresh one); `--at-next-window`
  holds one for the next window ("asked by the operator"), which a reload back to the running
  config does not cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.maintenance_sections import Window
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.supervise import systemd
from niodoo_supervisor.supervise.incidents import Reply, RestartAsked
from niodoo_supervisor.supervise.reload_diff import ConfigDiff, KeyClass, diff
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.seams import Clock
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.windows import is_open, next_opening

__all__ = ["ASKED", "NOT_RUNNING", "Pending", "RestartPlanner", "answer", "reload_change"]

log = structlog.get_logger("niodoo_supervisor")

ASKED = "asked by the operator"
NOT_RUNNING = "vLLM is not running; the next start uses the current config"
_SERVING = (State.READY, State.UNHEALTHY)


def answer(reply: Reply | None, ok: bool, message: str, **details: Any) -> None:
    """Answer an operator's command, unless nobody waits or it is answered already."""
    if reply is not None and not reply.done():
        reply.set_result(CommandResult(ok, message, details))


def reload_change(
    running: tuple[Config, LaunchPlan],
    effective: tuple[Config, LaunchPlan],
    new: Config,
    new_plan: LaunchPlan,
) -> ConfigDiff:
    """What a reload changes while a vLLM runs: what needs a restart compared with the config
    that vLLM was launched with, the rest compared with the config in effect (the newest)."""
    restart = diff(running[0], new, running[1], new_plan)
    settings = diff(effective[0], new, effective[1], new_plan)
    return ConfigDiff(
        tuple(change for change in restart.changes if change.kind is KeyClass.RESTART)
        + tuple(change for change in settings.changes if change.kind is not KeyClass.RESTART)
    )


@dataclass
class Pending:
    since: float  # wall clock
    reason: str
    keys: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    asked: bool = False  # by the operator: a reload back to the running config keeps it
    at: datetime | None = None  # the next opening (UTC)
    window: Window | None = None
    deadline: float = 0.0  # `at` on the monotonic clock

    def when(self) -> str:
        assert self.at is not None and self.window is not None
        return self.at.astimezone(self.window.zone).isoformat()

    def as_status(self) -> dict[str, Any]:
        assert self.at is not None
        return {
            "since": self.since,
            "reason": self.reason,
            "keys": self.keys,
            "changes": self.changes,
            "at": self.when(),
            "at_epoch": self.at.timestamp(),
            "window": str(self.window),
        }

    def status_text(self) -> str:
        return f"serving; restart pending at {self.when()}: {self.reason}"


class RestartPlanner:
    def __init__(self, clock: Clock, reporter: Reporter, windows: Sequence[Window]) -> None:
        self.clock = clock
        self.reporter = reporter
        self.windows: Sequence[Window] = windows  # the newest accepted config's
        self.running: tuple[Config, LaunchPlan] | None = None  # what the running vLLM runs
        self.pending: Pending | None = None

    # --- the loop's hooks ---------------------------------------------------------------------

    def launched(self, config: Config, plan: LaunchPlan) -> None:
        """A vLLM was launched with `config`: whatever was pending is carried out by it."""
        self.running = (config, plan)
        self._set(None)

    def unplanned_restart(self, why: str) -> None:
        """The run ended without being asked (a crash): the next start, at once, uses the
        newest config, so nothing stays pending."""
        if self.pending is not None:
            log.warning(
                "restart_pending_cleared",
                reason=f"vLLM restarts at once after: {why}; the next start uses the newest "
                f"config, which carries out the pending restart ({self.pending.reason})",
            )
            self._set(None)

    def on_reload(self, change: ConfigDiff, state: State) -> str | None:
        """A reload taken while a vLLM runs (`windows` already the new config's): the reason
        to restart now, or None (nothing to restart, or held until the next window)."""
        pending = self.pending
        if change.needs_restart:
            if state not in _SERVING:
                return change.restart_reason()  # still starting: it serves nobody yet
            keys = change.keys(KeyClass.RESTART)
            described = [
                each.describe() for each in change.changes if each.kind is KeyClass.RESTART
            ]
            asked = pending is not None and pending.asked
            return self._hold(change.restart_reason(), keys, described, asked=asked)
        if pending is None:
            return None
        if not pending.asked:
            log.info(
                "restart_pending_cancelled",
                reason="the config is the running one again: nothing to restart",
                cancelled=pending.reason,
            )
            self._set(None)
            return None
        # Asked by the operator: still pending, for the (maybe changed) windows.
        return self._hold(ASKED, [], [], asked=True)

    def keep_pending(self, pending: Pending | None) -> None:
        """A reload undone (its live adapter change failed): what was pending before it."""
        self._set(pending)

    def on_restart_asked(self, asked: RestartAsked, state: State) -> str | None:
        """`restart` while a run is watched: the reason to restart now, or None (held for the
        next window, or nothing to do); the reply is answered here."""
        pending = self.pending
        if not asked.now and state not in _SERVING:
            answer(asked.reply, True, "vLLM is starting with the current config: nothing to do")
            return None
        restart: str | None
        if asked.now:
            restart = f"{ASKED} (now)" + (f": {pending.reason}" if pending else "")
        elif pending is not None:
            restart = self._hold(pending.reason, pending.keys, pending.changes, asked=True)
        else:
            restart = self._hold(ASKED, [], [], asked=True)
        held = self.pending
        if restart is None and held is not None:
            self.reporter.notify(*systemd.status(held.status_text()))
            message = f"restart pending at {held.when()}"
            answer(asked.reply, True, message, pending_restart=held.as_status())
            return None
        answer(asked.reply, True, f"restarting vLLM now: {restart}")
        return restart

    def serving_text(self, ready_text: str) -> str:
        """systemd's STATUS= while vLLM serves: what is pending, when something is."""
        return self.pending.status_text() if self.pending is not None else ready_text

    def deadline(self) -> float | None:
        """When the watcher must wake to carry out the pending restart (monotonic)."""
        return self.pending.deadline if self.pending is not None else None

    def due(self) -> str | None:
        """The reason to restart now when the pending restart's window has opened."""
        pending = self.pending
        if pending is None or self.clock.monotonic() < pending.deadline:
            return None
        if not is_open(self.windows, self.clock.wall()):
            self._schedule(pending)  # the wall clock was set meanwhile: the opening moved
            return None
        return f"maintenance window {pending.window} open: {pending.reason}"

    # --- the pending restart ------------------------------------------------------------------

    def _hold(self, reason: str, keys: list[str], changes: list[str], *, asked: bool) -> str | None:
        """Pending until the next opening; the reason to restart now when a window is open
        (or none is configured)."""
        if is_open(self.windows, self.clock.wall()):
            return reason
        since = self.pending.since if self.pending is not None else self.clock.wall()
        pending = Pending(since, reason, keys, changes, asked)
        self._schedule(pending)
        log.info(
            "restart_pending",
            reason=reason,
            keys=keys,
            changes=changes,
            at=pending.when(),
            window=str(pending.window),
            updated=self.pending is not None,
        )
        self._set(pending)
        return None

    def _schedule(self, pending: Pending) -> None:
        wall = self.clock.wall()
        pending.at, pending.window = _next_window(self.windows, wall)
        pending.deadline = self.clock.monotonic() + (pending.at.timestamp() - wall)
        if pending is self.pending:
            self.reporter.status.pending_restart = pending.as_status()

    def _set(self, pending: Pending | None) -> None:
        if pending is None and self.pending is None:
            return
        self.pending = pending
        self.reporter.status.pending_restart = pending.as_status() if pending else None
        self.reporter.write_status()


def _next_window(windows: Sequence[Window], wall: float) -> tuple[datetime, Window]:
    """The next opening of `windows` (configured, none open now) and the window it is of."""
    openings = []
    for window in windows:
        opens = next_opening((window,), wall)
        assert opens is not None  # one window: never "any time"
        openings.append((opens, window))
    return min(openings, key=lambda opening: opening[0])
