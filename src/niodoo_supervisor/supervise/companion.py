"""The companion of vLLM (`LaunchPlan.companion`: the Ray node of `ray start ... --block`):
run in vLLM's own session, started before vLLM and stopped after it.

A process cannot join another's session, so when a plan has a companion the session's
leader is the session keeper (`session_keeper.py`, run by `server.python` from the state
folder): it starts the companion, then vLLM (a Ray head: once the Ray port answers), and
ends as vLLM ended, stopping the companion after it. Everything the supervisor does to
vLLM's session (the stop, the run record, the leftover rules, the processes of the
headless probe) thus covers the companion too. On a `ray-worker` host the keeper runs the
companion alone. The companion ending unasked ends the session with `COMPANION_EXITED`:
`companion_exited` is logged and the loop restarts this host's part like any exit.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.files.atomic import atomic_write
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.launch.topology import Role
from niodoo_supervisor.supervise import session_keeper
from niodoo_supervisor.supervise.session_keeper import COMPANION_EXITED

__all__ = ["COMPANION_EXITED", "KEEPER_FILE", "note_exit", "session_argv", "started"]

log = structlog.get_logger("niodoo_supervisor")

KEEPER_FILE = "session_keeper.py"  # in the state folder


def session_argv(config: Config, plan: LaunchPlan) -> tuple[str, ...]:
    """What to spawn as the session's leader: vLLM itself, or the keeper when the plan has a
    companion (written to the state folder first; raises OSError when it cannot be)."""
    companion = plan.companion
    if companion is None:
        return plan.argv
    role = plan.role
    wait_for = None
    if role.role is Role.HEAD and role.head_address is not None:
        wait_for = [role.head_address, config.topology.ray_port]
    spec = {
        "name": companion.name,
        "companion": list(companion.argv),
        "companion_env": dict(companion.env),
        "wait_for": wait_for,
        "vllm": list(plan.argv) if role.runs_vllm else None,
    }
    keeper = Path(config.state_dir) / KEEPER_FILE
    # Replaced by a rename, never written through (like vLLM's logging config).
    atomic_write(keeper, Path(session_keeper.__file__).read_text(encoding="utf-8"), 0o640)
    return (config.server.python, str(keeper), json.dumps(spec))


def started(plan: LaunchPlan, session: int) -> None:
    """The `companion_started` record (the keeper starts it at once)."""
    if plan.companion is not None:
        log.info(
            "companion_started",
            companion=plan.companion.name,
            session=session,
            command=" ".join(plan.companion.argv),
            then="vLLM" if plan.role.runs_vllm else "nothing else (no vLLM on this host)",
        )


def note_exit(plan: LaunchPlan, returncode: int) -> None:
    """The `companion_exited` record when the session ended because the companion did."""
    if plan.companion is not None and returncode == COMPANION_EXITED:
        log.warning(
            "companion_exited",
            companion=plan.companion.name,
            reason=f"{plan.companion.name} ended unasked; this host's part is restarted",
        )
