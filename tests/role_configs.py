"""Configs of a host in a `topology`, for the tests of per-host roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from niodoo_supervisor.config.loader import Config, load_config

HEAD = "10.13.0.1"
PORT = 8123  # server.port: where a `dp` head's /health is watched


def config_of(tmp: Path, **topology: Any) -> Config:
    """A config whose `topology` section is `topology` (one host when empty)."""
    document = {
        "server": {"python": "python3", "port": PORT},
        "model": {"path": str(tmp / "model"), "served_name": "tiny"},
        "topology": topology,
    }
    path = tmp / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, {})
    assert config is not None, [problem.format() for problem in problems]
    return config


def rank_of(tmp: Path, backend: str, rank: int, **topology: Any) -> Config:
    """Rank `rank` of 2 under `backend`, the head at `HEAD` unless `topology` says."""
    return config_of(tmp, backend=backend, nodes=2, rank=rank, **{"head_address": HEAD, **topology})
