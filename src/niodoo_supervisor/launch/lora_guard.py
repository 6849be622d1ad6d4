"""`lora.lora_name_field: reject|route`: what the launch plan adds for the `lora_name` guard
middleware (`guard/niodoo_lora_guard.py`, which runs inside vLLM) and the files it needs.

The middleware file is copied into `<state_dir>/lora-guard/` beside its settings JSON; the
folder goes first on vLLM's PYTHONPATH (an operator's own PYTHONPATH of `server.env` follows)
and `--middleware niodoo_lora_guard.LoraNameGuard` on its command line. `log` (the default)
adds nothing: vLLM drops the field and the supervisor reports its ignored-fields line.
The settings name the adapters vLLM serves; after a live adapter change the supervisor
rewrites them (`write_guard_adapters`) and the middleware reads them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.files.atomic import atomic_write
from niodoo_supervisor.launch.guard.niodoo_lora_guard import SETTINGS_ENV, LoraNameGuard

__all__ = [
    "GUARD_FOLDER",
    "GUARD_MIDDLEWARE",
    "LoraGuard",
    "guard_environment",
    "lora_guard_for",
    "write_guard",
    "write_guard_adapters",
]

GUARD_FOLDER = "lora-guard"
_MODULE = LoraNameGuard.__module__.rsplit(".", 1)[-1]  # niodoo_lora_guard
GUARD_MIDDLEWARE = f"{_MODULE}.{LoraNameGuard.__name__}"
_SETTINGS_NAME = "settings.json"


@dataclass(frozen=True)
class LoraGuard:
    """The guard of one plan: its folder and the settings written there at each start."""

    folder: Path
    mode: str  # reject | route
    served_model: str
    adapters: tuple[str, ...]

    @property
    def settings_path(self) -> Path:
        return self.folder / _SETTINGS_NAME

    @property
    def module_path(self) -> Path:
        return self.folder / f"{_MODULE}.py"

    def settings(self, adapters: Iterable[str] | None = None) -> dict[str, object]:
        names = self.adapters if adapters is None else adapters
        return {"mode": self.mode, "served_model": self.served_model, "adapters": list(names)}


def lora_guard_for(config: Config) -> LoraGuard | None:
    """The guard `config` asks for; None for `log`."""
    mode = config.lora.lora_name_field
    if mode == "log":
        return None
    return LoraGuard(
        folder=config.state_dir / GUARD_FOLDER,
        mode=mode,
        served_model=config.served_name,
        adapters=tuple(adapter.name for adapter in config.adapters),
    )


def guard_environment(guard: LoraGuard, env: Mapping[str, str]) -> dict[str, str]:
    """The variables the guard adds to vLLM's environment `env` (the supervisor's own with
    `server.env` over it): its folder first on PYTHONPATH, then whatever was there."""
    path = str(guard.folder)
    if env.get("PYTHONPATH"):
        path += os.pathsep + env["PYTHONPATH"]
    return {"PYTHONPATH": path, SETTINGS_ENV: str(guard.settings_path)}


def write_guard(guard: LoraGuard) -> None:
    """Copy the middleware and write its settings (before each start; raises OSError)."""
    source = resources.files("niodoo_supervisor.launch.guard").joinpath(f"{_MODULE}.py")
    atomic_write(guard.module_path, source.read_text(encoding="utf-8"), 0o640)
    write_guard_adapters(guard, guard.adapters)


def write_guard_adapters(guard: LoraGuard, adapters: Iterable[str]) -> None:
    """The settings naming `adapters`, replaced in one rename (the middleware reads them
    again when the file changed)."""
    atomic_write(guard.settings_path, json.dumps(guard.settings(adapters), indent=1), 0o640)
