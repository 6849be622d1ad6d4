"""What the status says of this host's role in `topology`: the `role` object of status.json
(which rank, whether vLLM's API server runs here, what this supervisor can and cannot see
from here), the `role:` line of `status`, and the `niodoo_host_role_info` metric.

What each role cannot see comes from how vLLM behaves across hosts: a head answers /health
200 while a headless peer is dead (until a request reaches it; a `dp` head with
`topology.check_engines` sends each engine one, engine_probe.py), a headless worker outlives
its head for good, and nothing on a headless host answers HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Info

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.topology import HostRole, Role
from niodoo_supervisor.supervise.headless_probe import head_target

__all__ = ["RoleMetric", "role_line", "role_object"]

_OTHER_HOSTS = "the other hosts' processes"
_TREE = "vLLM process tree"
_HTTP = "vLLM's HTTP API (/health, /v1/models)"
_DEAD_PEER = "a dead peer rank, until a request reaches it"
_ENGINES = "each data-parallel engine (a 1-token completion per liveness check)"
_GPUS = "this host's GPUs (NVML): memory used and the session's processes on them"


def role_object(config: Config, role: HostRole, *, gpus: bool = False) -> dict[str, Any]:
    """status.json's `role`; with `gpus` (NVML reads this host's GPUs), what it sees lists
    them after the processes."""
    sees, cannot_see = _sight(config, role)
    if gpus:
        sees.insert(1, _GPUS)
    return {
        "backend": role.backend,
        "rank": role.rank,
        "nodes": role.nodes,
        "role": role.role.value,
        "api_server": role.has_api_server,
        "sees": sees,
        "cannot_see": cannot_see,
    }


def _sight(config: Config, role: HostRole) -> tuple[list[str], list[str]]:
    if role.role is Role.SINGLE:
        return [_TREE, _HTTP], []
    if role.role is Role.HEAD:
        sees = [_TREE, _HTTP]
        if role.backend == "ray":
            sees.insert(1, "the Ray head (companion) process")
        if role.backend == "dp" and config.topology.check_engines:
            return [*sees, _ENGINES], [_OTHER_HOSTS]
        return sees, [_OTHER_HOSTS, _DEAD_PEER]
    target = head_target(config, role)
    head = [f"head {target.describe} reachability"] if target is not None else []
    unwatched = [] if target is not None else ["the head (topology.watch_head is off)"]
    if role.role is Role.RAY_WORKER:
        sees = ["the Ray node (companion) process", *head]
        return sees, ["requests (no vLLM on this host)", _OTHER_HOSTS, *unwatched]
    sees = [_TREE, "vLLM's start-up log", *head]
    return sees, ["requests (no HTTP server on this host)", _OTHER_HOSTS, *unwatched]


def role_line(role: object) -> str | None:
    """`status`'s `role:` text from status.json's `role` (None: a single host, or no role
    written); read defensively, the file may be damaged."""
    if not isinstance(role, Mapping) or role.get("role") in (None, Role.SINGLE.value):
        return None
    rank, nodes = role.get("rank"), role.get("nodes")
    backend, name = role.get("backend"), role.get("role")
    text = f"{name} rank {rank} of {nodes} ({backend})"
    text += ", API server here" if role.get("api_server") is True else ", no API server here"
    blind = role.get("cannot_see")
    if isinstance(blind, list) and blind:
        text += f"; cannot see: {', '.join(str(item) for item in blind)}"
    return text


class RoleMetric:
    """`niodoo_host_role_info{backend,role,rank} 1`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Info("niodoo_host_role", "This host's role in topology", registry=registry)

    def set(self, role: HostRole) -> None:
        self.info.info({"backend": role.backend, "role": role.role.value, "rank": str(role.rank)})
