"""Configs of a host in a `topology`, for the tests of per-host roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from niodoo_supervisor.config.loader import Config, load_config

HEAD = "10.13.0.1"
PORT = 8123  # server.port: where a `dp` head's /health is watched


def config_of(tmp: Path, engine: dict[str, Any] | None = None, **topology: Any) -> Config:
    """A config whose `topology` section is `topology` (one host when empty), with what the
    topology's checks ask of the rest (`topology_needs`); `engine` adds to or overrides its
    engine keys."""
    server, needed = topology_needs(topology)
    engine = {**needed, **(engine or {})}
    document = {
        "server": {"python": "python3", "port": PORT, **server},
        "model": {"path": str(tmp / "model"), "served_name": "tiny"},
        "engine": engine,
        "topology": topology,
    }
    path = tmp / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, {})
    assert config is not None, [problem.format() for problem in problems]
    return config


def topology_needs(topology: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `server` and `engine` keys a topology needs to pass its checks: any backend runs
    vLLM through the `serve` launcher; `mp` needs a world size the hosts divide (one tensor
    parallel worker per host), `dp` one data parallel engine per host and a head API the other
    hosts reach (their head watch asks its /health)."""
    backend, nodes = topology.get("backend", "none"), topology.get("nodes", 1)
    if backend == "none":
        return {}, {}
    engine = {"mp": {"tensor_parallel_size": nodes}, "dp": {"data_parallel_size": nodes}}
    server = {"launcher": "serve", **({"host": "0.0.0.0"} if backend == "dp" else {})}
    return server, engine.get(backend, {})


def topology_overrides(topology: dict[str, Any]) -> dict[str, Any]:
    """`topology` and what it needs, as `fault_supervisor.make_config`'s overrides."""
    server, engine = topology_needs(topology)
    return {
        "topology": topology,
        **{f"server__{key}": value for key, value in server.items()},
        **{f"engine__{key}": value for key, value in engine.items()},
    }


def rank_of(tmp: Path, backend: str, rank: int, **topology: Any) -> Config:
    """Rank `rank` of 2 under `backend`, the head at `HEAD` unless `topology` says."""
    return config_of(tmp, backend=backend, nodes=2, rank=rank, **{"head_address": HEAD, **topology})
