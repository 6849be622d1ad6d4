"""Preflight of a host in a `topology`: what this host can check of its part before vLLM
starts. Run by launch/preflight.py; nothing here runs on a single host.

- This host's rank can be known (topology.rank or NIODOO_NODE_RANK).
- Rank > 0: the head's port answers a TCP connect (mp: the master port, which the head's
  first worker holds while it lives; dp: the handshake port, which the head opens only while
  it starts, so its HTTP port counts too; ray: the Ray head's port). A WARNING, never an error:
  the hosts may start in any order and vLLM's workers wait for the head.
- The local NVIDIA GPUs (`/proc/driver/nvidia/gpus/*`, narrowed by CUDA_VISIBLE_DEVICES) are
  at least the GPUs this host's part needs; no such folder means a CPU host (a note).
- mp: a host name resolving to loopback without GLOO_SOCKET_IFNAME makes gloo bind 127.0.0.1
  and the other hosts fail to connect ("Gloo connectFullMesh failed"): a warning naming it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.relations import Report
from niodoo_supervisor.launch.ports import OwnListener, check_port
from niodoo_supervisor.launch.topology import (
    DEFAULT_MASTER_PORT,
    HostRole,
    RoleError,
    host_role,
)
from niodoo_supervisor.launch.topology_render import data_parallel_size_local

__all__ = [
    "NVIDIA_GPUS",
    "Needs",
    "check_host_and_port",
    "check_topology_host",
    "gpus_needed",
    "head_ports",
    "serves_http",
]

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees
CONNECT_TIMEOUT = 2.0  # per port; a host on the same private network answers in milliseconds
GLOO_ENV = "GLOO_SOCKET_IFNAME"

# (host, port) -> None when a TCP connection succeeds, else why not.
Connect = Callable[[str, int], "str | None"]
Resolve = Callable[[], "str | None"]  # the address this host's name resolves to
# preflight's gate: whether the check of `what`, reading these keys, can run (none was wrong).
Needs = Callable[..., bool]


def check_host_and_port(
    config: Config,
    environ: Mapping[str, str],
    report: Report,
    needs: Needs,
    network: bool,
    *,
    mine: Callable[[], OwnListener | None],
) -> list[str]:
    """preflight's last checks: this host's part in the topology, then, with `network` (not
    for `render`), the port vLLM's HTTP server will listen on where it runs on this host
    (`mine`: our own vLLM holding it, which is no problem). Returns the notes."""
    notes: list[str] = []
    if needs("this host's part in the topology", "topology", "engine", "server.env"):
        notes += check_topology_host(config, environ, report, network=network)
    if network and serves_http(config, environ) and needs("the port", "server.host", "server.port"):
        ours = check_port(config, report, mine())
        if ours is not None:
            notes.append(ours)
    return notes


def serves_http(config: Config, environ: Mapping[str, str]) -> bool:
    """Whether vLLM's HTTP server runs here, so its port must be free (a wrong rank: yes, the
    rank's own problem is reported by `check_topology_host`)."""
    try:
        return host_role(config, environ).has_api_server
    except RoleError:
        return True


def check_topology_host(
    config: Config,
    environ: Mapping[str, str],
    report: Report,
    *,
    network: bool = True,
    gpus_dir: Path = NVIDIA_GPUS,
    connect: Connect | None = None,
    resolve: Resolve | None = None,
) -> list[str]:
    """Reports this host's problems in its topology; returns notes (what was not checked).
    `network=False` (render) skips the head's port."""
    if config.topology.backend == "none":
        return []
    try:
        role = host_role(config, environ)
    except RoleError as exc:
        report(exc.key, exc.message, exc.fix)
        return []
    notes: list[str] = []
    if network and role.rank > 0:
        _check_head(config, role, report, connect or _connect)
    notes += _check_gpus(config, role, environ, report, gpus_dir)
    if role.backend == "mp" and GLOO_ENV not in config.server.env and GLOO_ENV not in environ:
        _check_loopback_name(report, resolve or _resolve_own_name)
    return notes


def head_ports(config: Config, role: HostRole) -> list[int]:
    """The head's ports a host of rank > 0 tries, in order: the first that answers will do."""
    topology = config.topology
    if role.backend == "mp":
        return [topology.master_port or DEFAULT_MASTER_PORT]
    if role.backend == "dp":
        return [topology.data_parallel_rpc_port, config.port]
    return [topology.ray_port]


def gpus_needed(config: Config, role: HostRole) -> int | None:
    """The GPUs this host's part runs on; None when vLLM or Ray place them (ray)."""
    engine = config.engine
    tp, pp = engine.tensor_parallel_size or 1, engine.pipeline_parallel_size or 1
    if role.backend == "mp":
        return max(1, tp * pp * (engine.data_parallel_size or 1) // role.nodes)
    if role.backend == "dp":
        return tp * pp * data_parallel_size_local(config)
    return None


def _check_head(config: Config, role: HostRole, report: Report, connect: Connect) -> None:
    head = str(role.head_address)
    ports = head_ports(config, role)
    failures = []
    for port in ports:
        why = connect(head, port)
        if why is None:
            return
        failures.append(f"{port}: {why}")
    report(
        "topology.head_address",
        f"the head {head} does not answer on {', '.join(failures)}; fine if it starts later "
        "(this host's vLLM waits for it)",
        "start rank 0, or check topology.head_address and that the firewall lets the hosts "
        "reach each other on every TCP port",
        warning=True,
    )


def _check_gpus(
    config: Config, role: HostRole, environ: Mapping[str, str], report: Report, gpus_dir: Path
) -> list[str]:
    needed = gpus_needed(config, role)
    if needed is None or not role.runs_vllm:
        return []
    try:
        found = sum(1 for _ in gpus_dir.iterdir())
    except OSError:
        return [
            f"not checked: the GPUs for this host's part, because {gpus_dir} is absent (a CPU host)"
        ]
    visible = config.server.env.get("CUDA_VISIBLE_DEVICES", environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        # The devices vLLM may use; MIG instances can outnumber the GPUs the driver lists.
        found = len([entry for entry in visible.split(",") if entry.strip()])
    if found < needed:
        report(
            "topology.nodes",
            f"this host ({role.describe}) needs {needed} GPU(s) for its part but sees {found}"
            + (" (CUDA_VISIBLE_DEVICES)" if visible is not None else ""),
            "run on a host with enough GPUs, or change the parallel sizes (engine.*) or "
            "topology.nodes",
        )
    return []


def _check_loopback_name(report: Report, resolve: Resolve) -> None:
    address = resolve()
    try:
        loopback = address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return
    if loopback:
        report(
            "server.env",
            f"this host's name {socket.gethostname()!r} resolves to {address}: with --nnodes, "
            "gloo binds there and the other hosts cannot connect (Gloo connectFullMesh failed)",
            f"set {GLOO_ENV} to the network interface the hosts share (e.g. eth0) in server.env "
            "or the host's environment, or map the host name to its network address",
            warning=True,
        )


def _connect(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return None
    except socket.gaierror as exc:
        return f"cannot resolve {host} ({exc.strerror})"
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)


def _resolve_own_name() -> str | None:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
