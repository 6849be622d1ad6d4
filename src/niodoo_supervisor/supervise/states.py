"""The supervisor's states and the transitions allowed between them. A leaf: no imports.

STARTING -> BACKOFF -> FATAL keeps "failed to start" apart from "crashed later" (READY ->
UNHEALTHY -> BACKOFF), as supervisord does. FATAL comes only from where it is decided: a
start that cannot work (STARTING: a fatal log line, an argparse exit) and the loop between
runs (STOPPED/BACKOFF: vLLM cannot be executed, or the crash-loop limit).

A planned restart (a reload whose config changes vLLM's command line) is no crash: STARTING/
READY/UNHEALTHY -> STOPPING -> STARTING, never BACKOFF. Between the two, a stop ends it
(STOPPING -> STOPPED) and a new config whose vLLM cannot be executed is FATAL (STOPPING ->
FATAL).
"""

from __future__ import annotations

import enum

__all__ = ["ALLOWED", "IllegalTransition", "State"]


class State(enum.Enum):
    STOPPED = "STOPPED"  # nothing running; before the first start and after a clean stop
    STARTING = "STARTING"  # vLLM launched, not yet answering /health and /v1/models
    READY = "READY"  # serving: the last checks passed
    UNHEALTHY = "UNHEALTHY"  # running, but the last check(s) failed; below the threshold
    BACKOFF = "BACKOFF"  # vLLM died or was stopped for a restart; waiting before the next start
    STOPPING = "STOPPING"  # asked to stop, or a planned restart: vLLM is being stopped
    FATAL = "FATAL"  # will not heal by retrying; the supervisor exits non-zero


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.FATAL, State.STOPPING}),
    State.STARTING: frozenset({State.READY, State.BACKOFF, State.STOPPING, State.FATAL}),
    State.READY: frozenset({State.UNHEALTHY, State.BACKOFF, State.STOPPING}),
    State.UNHEALTHY: frozenset({State.READY, State.BACKOFF, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPING, State.FATAL}),
    State.STOPPING: frozenset({State.STOPPED, State.STARTING, State.FATAL}),
    State.FATAL: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition the table does not allow, or from a state the caller did not expect: a
    bug in the supervisor, raised (an `assert` would vanish under `python -O`)."""

    def __init__(self, old: State, new: State, why: str) -> None:
        super().__init__(f"{old.value} -> {new.value}: {why}")
        self.old = old
        self.new = new
