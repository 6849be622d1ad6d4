"""The supervisor's account of itself, written to `status.json` in the state folder.

`niodoo-supervisor status` reads it; it is rewritten atomically on every state change and
every check, so a reader never sees half a file. The supervisor's pid comes with its start
time, so a reader can tell this supervisor from a later process that got the same pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from niodoo_supervisor.files.atomic import atomic_write

__all__ = ["STATUS_FILE", "CrashReport", "StatusBoard"]

STATUS_FILE = "status.json"


@dataclass
class CrashReport:
    at: float  # wall-clock time
    reason: str
    rule: str | None
    lines: list[str]


@dataclass
class StatusBoard:
    supervisor_pid: int = field(default_factory=os.getpid)
    # psutil's create_time of supervisor_pid: a live process with that pid is this
    # supervisor only if its create_time is the same.
    supervisor_create_time: float = field(default_factory=lambda: psutil.Process().create_time())
    state: str = "STOPPED"
    since: float = field(default_factory=time.time)
    reason: str = ""
    vllm_pid: int | None = None
    vllm_version: str | None = None
    served_model: str = ""
    adapters: list[str] = field(default_factory=list)  # what vLLM serves (as last changed)
    # Loaded by `adapters load`, not in lora.adapters ("live only, not in the YAML"): a reload
    # keeps them, a restart drops them.
    adapters_live_only: list[str] = field(default_factory=list)
    starts: int = 0
    restarts: int = 0
    last_exit: str | None = None
    last_check: dict[str, Any] | None = None
    consecutive_failures: int = 0
    phase: str | None = None
    events: dict[str, Any] = field(default_factory=dict)
    last_crash: CrashReport | None = None
    log_dropped_bytes: int = 0
    notify_dropped: int = 0  # systemd notifications not taken by the notify socket
    # A restart a reload (or `restart`) asked for that waits for a maintenance window: what,
    # why (the config diff) and when; None when nothing is pending.
    pending_restart: dict[str, Any] | None = None
    # A drain under way (a planned restart or stop): since when, vLLM's running and waiting
    # requests as last read; None when not draining. The supervisor is not ready meanwhile.
    drain: dict[str, Any] | None = None
    # The last reload's outcome: when, taken or refused, and the refusal's problems (the old
    # config keeps serving); None before the first reload.
    last_reload: dict[str, Any] | None = None
    # The maintenance windows as of the last write: open now, and when the next one opens
    # (ISO and epoch); None when none are configured (a restart may happen any time).
    maintenance: dict[str, Any] | None = None
    # lora.verify's effect probe, per adapter: verdict (effect, no_effect, failed), the largest
    # log-probability difference from the base model (nats), when (epoch), and why when not
    # `effect`. Set at readiness and by each live load.
    adapter_effects: dict[str, dict[str, Any]] = field(default_factory=dict)
    # This host's role in `topology` (`role_status.role_object`); None before the first start.
    role: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, state_dir: Path) -> None:
        with contextlib.suppress(OSError):  # status is advisory; never stop supervising for it
            # 0640: the last log lines may quote requests; operators read it through the group.
            atomic_write(
                state_dir / STATUS_FILE, json.dumps(self.to_dict(), indent=1, default=str), 0o640
            )
