"""What a run's watcher is handed: its settings (from the config) and a reload the loop took
while the run is watched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.launch.topology import SINGLE_HOST, HostRole
from niodoo_supervisor.supervise.headless_probe import ready_role
from niodoo_supervisor.supervise.progress import address, serving_sentence
from niodoo_supervisor.supervise.reload_diff import ConfigDiff
from niodoo_supervisor.supervise.seams import Prober

__all__ = ["LiveSettle", "Reloaded", "WatchSettings"]

# Settles a reload with what its live adapter change did (None: nothing to load or unload);
# False: refused (the change failed), the previous config stays.
LiveSettle = Callable[[CommandResult | None], bool]


@dataclass(frozen=True)
class WatchSettings:
    startup_timeout: float
    stall_timeout: float
    startup_interval: float
    interval: float
    failure_threshold: int
    ready_text: str  # systemd's STATUS= while ready
    model: str  # the served name, for the `ready` record
    address: str  # where vLLM listens (host:port)

    @classmethod
    def from_config(cls, config: Config, role: HostRole = SINGLE_HOST) -> WatchSettings:
        where = address(config.host, config.port)
        adapters = [adapter.name for adapter in config.adapters]
        # A host without an API server serves nothing here: it says its role instead.
        sentence = ready_role(config, role)
        serving = serving_sentence(config.served_name, adapters, where)
        return cls(
            startup_timeout=config.supervisor.startup_timeout,
            stall_timeout=config.supervisor.startup_stall_timeout,
            startup_interval=config.supervisor.health.startup_interval,
            interval=config.supervisor.health.interval,
            failure_threshold=config.supervisor.health.failure_threshold,
            ready_text=f"ready: {sentence or serving}",
            model=config.served_name,
            address=where,
        )


@dataclass(frozen=True)
class Reloaded:
    """A reload the loop took while a run is watched: what it changes, the reason to restart
    now (None: the run is kept) and, when the run is kept and the supervisor's settings
    changed, the run's new settings and the prober of the new config; `adapters` are the new
    config's, which `live_adapters` serves when they change live."""

    change: ConfigDiff
    settings: WatchSettings
    prober: Prober | None
    adapters: tuple[Adapter, ...]  # the new config's `lora.adapters`
    restart: str | None = None
    # A live adapter change: answers the reload with what the adapters did, once they did it.
    settle: LiveSettle | None = None
