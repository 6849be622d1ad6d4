"""What a host's role adds to vLLM's command line, and the Ray node it runs beside it: vLLM's
documented multi-node commands (docs/serving/parallelism_scaling.md and
data_parallel_deployment.md), one per backend and role.

| backend | rank 0 (`head`) | rank R > 0 |
|---|---|---|
| `mp` | `--nnodes N --node-rank 0 --master-addr HEAD [--master-port P]` | same with `--node-rank R --headless` |
| `dp` | `--data-parallel-size-local L --data-parallel-address HEAD --data-parallel-rpc-port P` | same with `--headless --data-parallel-start-rank R*L` |
| `ray` | `--distributed-executor-backend ray` (data parallel: `--data-parallel-size-local L --data-parallel-backend ray`); companion `ray start --head --port=P --block` | no vLLM; companion `ray start --address=HEAD:P --block` |

`--data-parallel-size` comes from `engine.data_parallel_size` like on one host. A headless role
serves no HTTP: its command has no `--host`/`--port` (vLLM parses and ignores them; its docs
show none); every other flag stays as on the head, since the engines must agree.
`--headless` exists only under `vllm serve`, so a backend needs `server.launcher: serve`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.topology_relations import launcher_problem
from niodoo_supervisor.launch.topology import (
    CompanionPlan,
    HostRole,
    Role,
    RoleError,
)

__all__ = [
    "HTTP_FLAGS",
    "PER_RANK_FLAGS",
    "companion_for",
    "data_parallel_size_local",
    "ray_executable",
    "role_argv",
]

# Flags of vLLM's HTTP server: a headless role has none.
HTTP_FLAGS = ("--host", "--port")
# Flags whose value differs between the ranks of one topology (`check --all-hosts`).
PER_RANK_FLAGS = ("--node-rank", "--data-parallel-start-rank")


def role_argv(config: Config, role: HostRole, argv: Sequence[str]) -> list[str]:
    """`argv` (vLLM's command without server.extra_args) as `role` runs it. Raises RoleError
    when the config cannot render the role (a backend with the `module` launcher)."""
    if role.role is Role.SINGLE:
        return list(argv)
    if config.server.launcher != "serve":
        raise RoleError("server.launcher", *launcher_problem(role.backend))
    if role.role is Role.RAY_WORKER:
        return []  # a Ray node only: vLLM runs on the head and places its workers here
    rendered = _without_http(argv) if not role.has_api_server else list(argv)
    return rendered + _backend_flags(config, role)


def data_parallel_size_local(config: Config) -> int:
    """`dp` and `ray`: the engines each host runs: topology.data_parallel_size_local, else the data
    parallel size shared evenly (the relations check it divides)."""
    topology = config.topology
    if topology.data_parallel_size_local is not None:
        return topology.data_parallel_size_local
    return max(1, (config.engine.data_parallel_size or 1) // topology.nodes)


def ray_executable(config: Config) -> str:
    """topology.ray_command, else `ray` beside server.python (the same virtual environment)."""
    if config.topology.ray_command is not None:
        return str(config.topology.ray_command)
    return str(Path(str(config.server.python)).parent / "ray")


def companion_for(config: Config, role: HostRole) -> CompanionPlan | None:
    """`ray`: the Ray node this host runs (`ray start ... --block` stays in the foreground, so
    it is supervised like vLLM). VLLM_HOST_IP is set on the head when head_address is an IP
    address (the address the other hosts reach it at); a worker's own address is not in the
    shared config, so there it comes from the host's environment or server.env."""
    if role.backend != "ray":
        return None
    port = config.topology.ray_port
    ray = ray_executable(config)
    env: dict[str, str] = {}
    argv: tuple[str, ...]
    if role.role is Role.HEAD:
        argv = (ray, "start", "--head", f"--port={port}", "--block")
        if _is_ip_address(role.head_address) and "VLLM_HOST_IP" not in config.server.env:
            env["VLLM_HOST_IP"] = str(role.head_address)
    else:
        argv = (ray, "start", f"--address={_host_port(role.head_address, port)}", "--block")
    env.update(config.server.env)  # the operator's variables reach the Ray node as vLLM's
    return CompanionPlan("ray", argv, env)


def _backend_flags(config: Config, role: HostRole) -> list[str]:
    topology, head = config.topology, str(role.head_address)
    if role.backend == "mp":
        flags = ["--nnodes", str(role.nodes), "--node-rank", str(role.rank), "--master-addr", head]
        if topology.master_port is not None:
            flags += ["--master-port", str(topology.master_port)]
        return flags + (["--headless"] if role.role is Role.HEADLESS else [])
    if role.backend == "dp":
        local = data_parallel_size_local(config)
        flags = [
            "--data-parallel-size-local",
            str(local),
            "--data-parallel-address",
            head,
            "--data-parallel-rpc-port",
            str(topology.data_parallel_rpc_port),
        ]
        if role.role is Role.HEADLESS:
            flags += ["--headless", "--data-parallel-start-rank", str(role.rank * local)]
        return flags
    flags = ["--distributed-executor-backend", "ray"]  # the ray head
    if (config.engine.data_parallel_size or 1) > 1:
        # vLLM's DP over Ray (docs: data_parallel_deployment.md): its engines are placed on the
        # Ray nodes, L of them per node; without the backend flag they all start on the head
        # with mp, and without L, vLLM puts data_parallel_size of them on the head alone.
        per_node = str(data_parallel_size_local(config))
        flags += ["--data-parallel-size-local", per_node, "--data-parallel-backend", "ray"]
    return flags


def _without_http(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in HTTP_FLAGS:
            skip = True  # and its value
        elif not arg.startswith(tuple(flag + "=" for flag in HTTP_FLAGS)):
            kept.append(arg)
    return kept


def _is_ip_address(text: str | None) -> bool:
    try:
        ipaddress.ip_address(text or "")
    except ValueError:
        return False
    return True


def _host_port(host: str | None, port: int) -> str:
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
