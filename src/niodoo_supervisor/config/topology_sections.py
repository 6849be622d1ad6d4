"""The `topology` section: vLLM served across several hosts by vLLM's own machinery, one
supervisor per host, every host reading the same YAML.

`backend` picks the machinery: `mp` (`--nnodes`/`--node-rank`/`--master-addr`, the hosts
after the head `--headless`), `dp` (data parallel: `--data-parallel-*`, the hosts after the
head `--headless`) or `ray` (a Ray cluster: `ray start` on every host, vLLM on the head only).
The sizes stay in `engine` (`tensor_parallel_size`, `pipeline_parallel_size`,
`data_parallel_size`). This host's rank comes from `rank`, or when absent from the environment
variable `NIODOO_NODE_RANK`, so one file serves every host. The role a rank plays, and what it
renders, is `launch/topology.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from niodoo_supervisor.config.value_types import Bool, HostName, Int, LocalPath, Number, Section

__all__ = ["RANK_ENV", "TopologySection"]

# Where a host's rank comes from when `topology.rank` is absent.
RANK_ENV = "NIODOO_NODE_RANK"


class TopologySection(Section):
    """topology: vLLM across several hosts (one supervisor per host, one YAML for all)."""

    backend: Annotated[
        Literal["none", "mp", "dp", "ray"],
        Field(
            description="`none`: one host. `mp`: vLLM's multiprocessing across hosts "
            "(--nnodes, --node-rank, --master-addr; every rank after 0 --headless). `dp`: data "
            "parallel (--data-parallel-size-local, --data-parallel-address, "
            "--data-parallel-rpc-port; every rank after 0 --headless with its start rank). "
            "`ray`: a Ray cluster (the supervisor runs `ray start ... --block` on every host; "
            "vLLM with --distributed-executor-backend ray on rank 0 only)."
        ),
    ] = "none"
    nodes: Annotated[
        Int,
        Field(ge=1, le=1024, description="Hosts in all (2 or more with a backend)."),
    ] = 1
    rank: Annotated[
        Int | None,
        Field(
            ge=0,
            le=1023,
            description="This host's rank, 0 for the head. Absent: read from the environment "
            f"variable {RANK_ENV}, so one file serves every host.",
        ),
    ] = None
    head_address: Annotated[
        HostName | None,
        Field(
            description="The head's address as the other hosts reach it (an IP address on "
            "the private network between the hosts: vLLM's traffic is not encrypted). "
            "Required with a backend."
        ),
    ] = None
    master_port: Annotated[
        Int | None,
        Field(
            ge=1,
            le=65535,
            description="`mp`: the head's torch.distributed port (--master-port). Absent: "
            "vLLM's default, 29501.",
        ),
    ] = None
    data_parallel_size_local: Annotated[
        Int | None,
        Field(
            ge=1,
            description="`dp`: data-parallel engines on each host (--data-parallel-size-local); "
            "rank R starts at engine R x this. `ray` with engine.data_parallel_size > 1: the "
            "engines per Ray node (with --data-parallel-backend ray). Absent: "
            "engine.data_parallel_size / nodes.",
        ),
    ] = None
    data_parallel_rpc_port: Annotated[
        Int,
        Field(
            ge=1,
            le=65535,
            description="`dp`: the head's port for the engines' handshake "
            "(--data-parallel-rpc-port).",
        ),
    ] = 13345
    ray_port: Annotated[
        Int,
        Field(ge=1, le=65535, description="`ray`: the Ray head's port (ray start --port)."),
    ] = 6379
    ray_command: Annotated[
        LocalPath | None,
        Field(
            description="`ray`: the `ray` executable. Absent: `ray` beside server.python (the "
            "same virtual environment)."
        ),
    ] = None
    watch_head: Annotated[
        Bool,
        Field(
            description="A host without vLLM's HTTP server (every rank after 0) also checks "
            "that the head is reachable; when it is not for supervisor.health."
            "failure_threshold checks in a row, the host is unhealthy and its part is restarted "
            "(vLLM's workers do not notice a dead head by themselves). With `dp` they ask the "
            "head's http://head_address:server.port/health, so the head's server.host must not "
            "be loopback."
        ),
    ] = True
    check_engines: Annotated[
        Bool,
        Field(
            description="`dp`: the head's liveness checks also send each data-parallel engine "
            "a 1-token completion (pinned with X-data-parallel-rank); one that does not answer "
            "fails the check, and supervisor.health.failure_threshold failures restart the head "
            "so a relaunched engine can join it. Off: the head serves on without them, and "
            "requests routed to a lost engine hang."
        ),
    ] = True
    engine_timeout: Annotated[
        Number,
        Field(
            gt=0,
            le=3600,
            description="`dp`: how long the head waits for each engine's 1-token completion "
            "(the whole request). Generous: on a busy GPU it queues behind a full batch.",
        ),
    ] = 60.0
