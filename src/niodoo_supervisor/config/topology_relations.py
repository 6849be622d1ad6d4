"""Checks between `topology` and the keys it renders with: the sizes vLLM would refuse after
starting on every host, the keys a backend needs, and keys of another backend (ignored: a
warning). Pure, like `relations.py`; one line per problem naming the key and the fix.

vLLM's own rules (0.32, `engine/arg_utils.py`): `--nnodes` > 1 needs the `mp` data-parallel
backend and must divide the world size TP x PP x DP; data parallel's engines per host times
the hosts is the data-parallel size.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import TYPE_CHECKING

from niodoo_supervisor.config.engine_sections import EngineSection
from niodoo_supervisor.config.topology_sections import TopologySection

if TYPE_CHECKING:  # relations.py calls check_topology: its types only, not an import cycle
    from niodoo_supervisor.config.relations import Report, Sections

__all__ = ["TOPOLOGY_FLAGS", "check_topology", "is_loopback", "launcher_problem"]


# The flags the topology renders (launch/topology_render.py): never in server.extra_args.
TOPOLOGY_FLAGS = (
    "--nnodes",
    "-n",
    "--node-rank",
    "-r",
    "--master-addr",
    "--master-port",
    "--headless",
    "--data-parallel-size-local",
    "--data-parallel-address",
    "--data-parallel-rpc-port",
    "--data-parallel-start-rank",
    "--distributed-executor-backend",
)
# Rendered on the ray head when engine.data_parallel_size > 1 (vLLM's DP over Ray).
_RAY_DP_FLAG = "--data-parallel-backend"
# The keys only some backends read.
_BACKEND_KEYS = {
    "master_port": ("mp",),
    "data_parallel_size_local": ("dp", "ray"),
    "data_parallel_rpc_port": ("dp",),
    "ray_port": ("ray",),
    "ray_command": ("ray",),
}
# The keys every backend reads, and `none` does not.
_SHARED_KEYS = ("nodes", "rank", "head_address")


def check_topology(config: Sections, report: Report, wrong: Collection[str] = ()) -> None:
    def valid(*keys: str) -> bool:
        """No key of these (or inside them: `engine` covers engine.tensor_parallel_size) nor
        their section was reported wrong: its value here would be a stand-in default."""
        return not any(
            key == bad or key.startswith(bad + ".") or bad.startswith(key + ".")
            for key in keys
            for bad in wrong
        )

    if not valid("topology"):
        return
    topology = config.topology
    _check_other_backends_keys(topology, report)
    if topology.backend == "none":
        return
    backend = topology.backend
    if topology.nodes < 2:
        report(
            "topology.nodes",
            f"topology.backend {backend} spans hosts, but topology.nodes is {topology.nodes}",
            "set topology.nodes to the number of hosts, or topology.backend: none",
        )
    elif topology.rank is not None and topology.rank >= topology.nodes:
        report(
            "topology.rank",
            f"rank {topology.rank} is not below topology.nodes ({topology.nodes})",
            f"ranks run from 0 (the head) to {topology.nodes - 1}",
        )
    if topology.head_address is None:
        report(
            "topology.head_address",
            f"topology.backend {backend} needs the head's address",
            "set topology.head_address to the address the other hosts reach rank 0 at",
        )
    if valid("server.host") and _head_watch_cannot_reach(config):
        report(
            "server.host",
            f"the head's API listens on loopback only ({config.server.host}); the other "
            "hosts' head watch cannot reach it",
            "set server.host: 0.0.0.0 (with an API key) or the private address, or "
            "topology.watch_head: false",
        )
    if valid("server.launcher") and config.server.launcher != "serve":
        report("server.launcher", *launcher_problem(backend))
    if valid("server.extra_args"):
        _check_extra_args(config.server.extra_args, backend, report)
    if valid("engine") and topology.nodes >= 2:
        if backend == "mp":
            _check_mp_sizes(config.engine, topology, report)
        elif backend == "dp" or (backend == "ray" and (config.engine.data_parallel_size or 1) > 1):
            _check_dp_sizes(config.engine, topology, report)


def launcher_problem(backend: str) -> tuple[str, str]:
    """Why a backend cannot run with the `module` launcher, and the fix."""
    return (
        f"topology.backend {backend} needs vLLM's `serve` launcher: --headless and the "
        "multi-node flags exist only under `vllm serve`",
        "set server.launcher: serve",
    )


def _head_watch_cannot_reach(config: Sections) -> bool:
    """`dp`: the hosts after the head watch the head's HTTP /health at head_address and
    server.port (supervise/headless_probe.py); a loopback server.host serves no other host
    (unless the head's address is loopback too: every rank on one machine). mp and ray watch
    a port of vLLM's or Ray's own, not server.host."""
    topology = config.topology
    if topology.backend != "dp" or not topology.watch_head:
        return False
    head = topology.head_address
    return is_loopback(config.server.host) and not (head is not None and is_loopback(head))


def is_loopback(host: str) -> bool:
    """`host` is reachable from this host only (relations.py's API key warning uses it too)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_other_backends_keys(topology: TopologySection, report: Report) -> None:
    backend = topology.backend
    for key in sorted(topology.model_fields_set):
        readers = _BACKEND_KEYS.get(key)
        if readers is not None and backend not in readers:
            reader = " or ".join(readers)
            report(
                f"topology.{key}",
                f"topology.{key} is read only with backend {reader}; with {backend} it is ignored",
                f"remove it, or set topology.backend: {reader}",
                warning=True,
            )
        elif backend == "none" and key in _SHARED_KEYS:
            report(
                f"topology.{key}",
                f"topology.{key} is ignored with topology.backend none (one host)",
                "remove it, or set topology.backend (mp, dp or ray)",
                warning=True,
            )


def _check_extra_args(extra_args: tuple[str, ...], backend: str, report: Report) -> None:
    for index, arg in enumerate(extra_args):
        flag = arg.split("=", 1)[0]
        if flag in TOPOLOGY_FLAGS or (flag == _RAY_DP_FLAG and backend == "ray"):
            report(
                "server.extra_args",
                f"{flag} is rendered from topology (backend {backend}) for each host's rank",
                "remove it from server.extra_args",
            )
        elif flag == "--data-parallel-backend" and backend == "mp":
            value = arg.split("=", 1)[1] if "=" in arg else _next(extra_args, index)
            if value == "ray":
                report(
                    "server.extra_args",
                    "--data-parallel-backend ray cannot span hosts with --nnodes (backend mp): "
                    "vLLM refuses it at start",
                    "remove it (mp is vLLM's default), or use topology.backend: ray",
                )


def _check_mp_sizes(engine: EngineSection, topology: TopologySection, report: Report) -> None:
    tp, pp, dp = (
        engine.tensor_parallel_size or 1,
        engine.pipeline_parallel_size or 1,
        engine.data_parallel_size or 1,
    )
    world = tp * pp * dp
    if world % topology.nodes:
        report(
            "topology.nodes",
            f"{topology.nodes} hosts do not divide vLLM's world size (tensor {tp} x pipeline "
            f"{pp} x data {dp} = {world}): vLLM refuses it at start",
            "make engine.tensor_parallel_size x pipeline_parallel_size x data_parallel_size a "
            "multiple of topology.nodes (each host runs the same number of workers)",
        )


def _check_dp_sizes(engine: EngineSection, topology: TopologySection, report: Report) -> None:
    size, nodes, local = (
        engine.data_parallel_size or 1,
        topology.nodes,
        topology.data_parallel_size_local,
    )
    if size < nodes:
        report(
            "engine.data_parallel_size",
            f"data parallel size {size} is below topology.nodes ({nodes}): a host would run "
            "no engine",
            f"set engine.data_parallel_size to at least {nodes}",
        )
    elif local is not None and size != nodes * local:
        report(
            "topology.data_parallel_size_local",
            f"{nodes} hosts x {local} engines each = {nodes * local}, not "
            f"engine.data_parallel_size ({size})",
            f"set engine.data_parallel_size to {nodes * local}, or "
            "topology.data_parallel_size_local to its share",
        )
    elif local is None and size % nodes:
        report(
            "engine.data_parallel_size",
            f"data parallel size {size} cannot be shared evenly by {nodes} hosts",
            "set topology.data_parallel_size_local, or a data parallel size that is a "
            "multiple of topology.nodes",
        )


def _next(items: tuple[str, ...], index: int) -> str | None:
    return items[index + 1] if index + 1 < len(items) else None
