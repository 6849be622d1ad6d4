"""The next start's config and plan (`NextStart`), and the taking of a reloaded config into
them (`ReloadTaker`).

A reload replaces the two together; taking it also decides, while vLLM runs, whether it
restarts now, is held for a maintenance window, or is kept with its adapters changed live, and
applies the supervisor's own settings (restart policy, windows) at once. It lives apart from
the loop, which only starts vLLM with `NextStart` and hands a reload over (`take` while idle,
`while_watching` while a run is up, which also gives its watcher the new settings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.reload_diff import ConfigDiff, KeyClass, diff
from niodoo_supervisor.supervise.reload_outcome import settle_reload
from niodoo_supervisor.supervise.reporter import Reporter
from niodoo_supervisor.supervise.restart_planner import RestartPlanner, reload_change
from niodoo_supervisor.supervise.restart_policy import RestartPolicy
from niodoo_supervisor.supervise.seams import ProberFactory
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.watch_settings import LiveSettle, Reloaded, WatchSettings

__all__ = ["NextStart", "ReloadTaker", "Taken"]

# What a taken reload changes, the reason to restart vLLM now (if any), and, for a live adapter
# change, where its outcome settles the reload.
Taken = tuple[ConfigDiff, str | None, LiveSettle | None]


@dataclass
class NextStart:
    """What the next start runs; a taken reload replaces the two together."""

    config: Config
    plan: LaunchPlan


class ReloadTaker:
    def __init__(
        self,
        next_start: NextStart,
        *,
        planner: RestartPlanner,
        reporter: Reporter,
        policy: RestartPolicy,
        prober_factory: ProberFactory,
    ) -> None:
        self.next_start = next_start  # the only writer of it once the loop runs
        self.planner = planner
        self.reporter = reporter  # says what was taken; its state is the supervisor's
        self.policy = policy
        self.prober_factory = prober_factory

    def while_watching(self, result: ReloadResult) -> Reloaded | None:
        """A reload taken while a run is watched: what its watcher is handed."""
        taken = self.take(result, vllm_running=True)
        if taken is None:
            return None
        change, restart, settle = taken
        # A run kept (no restart now) gets the supervisor's new settings at once.
        retune = restart is None and any(c.kind is not KeyClass.RESTART for c in change.changes)
        config, plan = self.next_start.config, self.next_start.plan
        prober = self.prober_factory(config, plan.api_key) if retune else None
        settings = WatchSettings.from_config(config, plan.role)
        return Reloaded(change, settings, prober, config.adapters, restart, settle)

    def take(self, result: ReloadResult, *, vllm_running: bool) -> Taken | None:
        """Take a reloaded config: what it changes, (while vLLM runs) the reason to restart
        it now, if any, and, for a live adapter change, where its outcome settles the reload;
        None (and said why) when refused. The supervisor's own settings apply at once; the
        rest is the next start's config."""
        result = _state_dir_kept(result, self.next_start.config)
        if result.config is None or result.plan is None:
            self.reporter.reload_refused(result.errors)
            settle_reload(result, None, self.reporter, vllm_running=vllm_running)
            return None
        config, plan = self.next_start.config, self.next_start.plan  # what it replaces
        restore = self._restorer(vllm_running)
        running = self.planner.running if vllm_running else None
        if running is None:
            change = diff(config, result.config, plan, result.plan)
        else:
            change = reload_change(running, (config, plan), result.config, result.plan)
        new_config = result.config
        self.next_start.config, self.next_start.plan = result.config, result.plan
        self.planner.windows = result.config.maintenance.windows
        self.reporter.windows = result.config.maintenance.windows
        restart = self.planner.on_reload(change, self.reporter.state) if vllm_running else None
        live_keys = change.keys(KeyClass.LIVE)
        if restart is None and vllm_running and self.reporter.state is State.STARTING and live_keys:
            # vLLM is not listening yet, so it cannot load them; it serves nobody yet either.
            restart = f"config changed while vLLM starts: {', '.join(live_keys)}"
        self.reporter.status.vllm_version = result.plan.vllm_version
        self.policy.settings = result.config.supervisor.restart
        held = self.planner.pending if restart is None else None
        pending = held.status_text() if held else None
        self.reporter.reload_taken(change, vllm_running=vllm_running, pending=pending)

        def settle(live: CommandResult | None = None) -> bool:
            refused = live is not None and not live.ok
            if refused:
                # The old config keeps serving with its adapters: the next start (a crash's
                # restart) must not bring back the adapters vLLM or lora.verify refused.
                restore()
            elif new_config.lora.verify == "off":
                self.reporter.status.adapter_effects = {}  # no verdict stands for them now
            settle_reload(
                result,
                change,
                self.reporter,
                vllm_running=vllm_running,
                restart=restart,
                pending=pending,
                live=live,
            )
            return not refused

        live = result.config.lora.runtime_updates and self.reporter.state is not State.STARTING
        if vllm_running and restart is None and live:
            # The served adapters are brought to the YAML's (even an unchanged one's: a live
            # load may have failed, or `adapters unload` taken one away), and the answer waits
            # for them: `reload` must not say "taken" before vLLM has loaded them.
            return change, restart, settle
        settle()
        return change, restart, None

    def _restorer(self, vllm_running: bool) -> Callable[[], None]:
        """Undoes what taking a reload changes, for one whose live adapter change failed."""
        config, plan = self.next_start.config, self.next_start.plan
        pending, version = self.planner.pending, self.reporter.status.vllm_version

        def restore() -> None:
            self.next_start.config, self.next_start.plan = config, plan
            self.planner.windows = self.reporter.windows = config.maintenance.windows
            self.planner.keep_pending(pending)
            self.policy.settings = config.supervisor.restart
            self.reporter.status.vllm_version = version

        return restore


def _state_dir_kept(result: ReloadResult, running: Config) -> ReloadResult:
    """A reload cannot move the state folder: the lock, the run record and the control socket
    (which `reload` and `status` find through the config) stay where the supervisor started."""
    if result.config is None or result.config.state_dir == running.state_dir:
        return result
    problem = (
        f"supervisor.state_dir: {result.config.state_dir} differs from the running "
        f"{running.state_dir}, which holds the lock, the run record and the control socket; "
        "a reload cannot move it: change it with `systemctl restart`"
    )
    return replace(result, config=None, plan=None, errors=[problem])
