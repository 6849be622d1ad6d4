"""Where the running supervisor keeps its state folder and control socket, for the verbs that
talk to it (`status`, `reload`, `restart`, `adapters`).

These must work whatever the config file now says: after an edit that does not validate (the
very case where an operator asks what is running), or in a shell without the service's
environment (`${NIODOO_VLLM_PYTHON}` unset). So when the config does not load, only
`supervisor.state_dir` and `supervisor.control.socket` are read from the YAML, leniently;
failing that, the defaults. `--state-dir` overrides them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from niodoo_supervisor.config.envexpand import ExpansionError, expand
from niodoo_supervisor.config.loader import MAX_CONFIG_BYTES, load_config
from niodoo_supervisor.config.supervisor_sections import SupervisorSection
from niodoo_supervisor.config.value_types import resolve
from niodoo_supervisor.files.inputs import InputFileError, read_text_file

__all__ = ["StateLocation", "locate"]

_DEFAULT_STATE_DIR = SupervisorSection.model_fields["state_dir"].default
_SOCKET_NAME = "control.sock"


@dataclass(frozen=True)
class StateLocation:
    state_dir: Path
    socket: Path
    # Why the config was not used as a whole (None when it loaded): shown with the answer.
    note: str | None = None


def locate(config_path: Path | None, state_dir: Path | None) -> StateLocation:
    found_dir: Path | None = None
    socket: Path | None = None
    note: str | None = None
    if config_path is not None:
        config, problems = load_config(config_path, os.environ)
        if config is not None:
            found_dir = config.state_dir
            explicit = config.supervisor.control.socket
            socket = Path(explicit) if explicit else None
        else:
            first = next((p.format() for p in problems if p.is_error), "it does not load")
            note = f"the config does not load ({first}); only its state_dir was read"
            found_dir, socket = _lenient(config_path)
    directory = state_dir or found_dir or Path(_DEFAULT_STATE_DIR)
    return StateLocation(directory, socket or directory / _SOCKET_NAME, note)


def _lenient(config_path: Path) -> tuple[Path | None, Path | None]:
    """`supervisor.state_dir` and `supervisor.control.socket` as written, whatever else the
    file holds; None for what cannot be read."""
    try:
        document = yaml.safe_load(read_text_file(config_path, MAX_CONFIG_BYTES))
    except (InputFileError, yaml.YAMLError, RecursionError):
        return None, None
    supervisor = _mapping(document, "supervisor")
    base = config_path.resolve().parent
    state_dir = _path(supervisor.get("state_dir"), base)
    socket = _path(_mapping(supervisor, "control").get("socket"), base)
    return state_dir, socket


def _mapping(document: Any, key: str) -> dict[str, Any]:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, dict) else {}


def _path(value: Any, base: Path) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return Path(resolve(expand(value, os.environ), base))
    except (ExpansionError, ValueError):
        return None
