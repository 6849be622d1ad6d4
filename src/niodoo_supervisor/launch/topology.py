"""The role this host plays in `topology`: which rank it is, whether it runs vLLM's HTTP server,
vLLM at all, or only a Ray node, and which of the head's ports it can check.

| backend | rank 0 (`head`) | rank > 0 |
|---|---|---|
| `none` | `single`: today's one host | - |
| `mp` | vLLM with the API server and the first workers | `headless`: vLLM's workers only |
| `dp` | vLLM with the API servers and the first engines | `headless`: engines only |
| `ray` | the Ray head (companion) and vLLM | `ray-worker`: a Ray node only, no vLLM |

Pure: the rank comes from the config or, when absent, from `environ[RANK_ENV]`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.topology_sections import RANK_ENV

__all__ = [
    "DEFAULT_MASTER_PORT",
    "SINGLE_HOST",
    "CompanionPlan",
    "HostRole",
    "Role",
    "RoleError",
    "host_role",
    "with_rank",
]

# vLLM's default --master-port (`config/parallel.py`), used when topology.master_port is absent.
DEFAULT_MASTER_PORT = 29501
# The digits of the largest rank (topology.nodes is at most 1024).
_RANK_DIGITS = 4


class Role(str, enum.Enum):
    SINGLE = "single"
    HEAD = "head"
    HEADLESS = "headless"
    RAY_WORKER = "ray-worker"


class RoleError(Exception):
    """This host's rank cannot be known; `key` names the config key (or the variable)."""

    def __init__(self, key: str, message: str, fix: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class HostRole:
    backend: str  # topology.backend: none | mp | dp | ray
    rank: int
    nodes: int
    role: Role
    head_address: str | None  # None with backend none

    @property
    def has_api_server(self) -> bool:
        """vLLM's HTTP server runs here: /health, /v1/models and the probes."""
        return self.role in (Role.SINGLE, Role.HEAD)

    @property
    def runs_vllm(self) -> bool:
        return self.role is not Role.RAY_WORKER

    @property
    def describe(self) -> str:
        """`rank 1 of 2 (headless, dp)`, or `single host`."""
        if self.role is Role.SINGLE:
            return "single host"
        return f"rank {self.rank} of {self.nodes} ({self.role.value}, {self.backend})"


SINGLE_HOST = HostRole("none", 0, 1, Role.SINGLE, None)


@dataclass(frozen=True)
class CompanionPlan:
    """A process the supervisor runs beside vLLM in the same session (the Ray node of
    `ray start ... --block`): started before vLLM, stopped after it, with the same stop and
    leftover rules. On a `ray-worker` host it is the only process."""

    name: str  # `ray`: what records and the status call it
    argv: tuple[str, ...]
    env: Mapping[str, str]  # added to the supervisor's environment, like LaunchPlan.env


def host_role(config: Config, environ: Mapping[str, str]) -> HostRole:
    """This host's role under `config` (rank from topology.rank, else `environ[RANK_ENV]`).
    Raises RoleError when a backend is set and the rank is missing, not a number or not
    below topology.nodes."""
    topology = config.topology
    if topology.backend == "none":
        return SINGLE_HOST
    rank = topology.rank if topology.rank is not None else _rank_from(environ)
    if rank >= topology.nodes:
        key = "topology.rank" if topology.rank is not None else RANK_ENV
        raise RoleError(
            key,
            f"rank {rank} is not below topology.nodes ({topology.nodes})",
            f"ranks run from 0 (the head) to {topology.nodes - 1}",
        )
    return HostRole(
        topology.backend,
        rank,
        topology.nodes,
        _role_of(topology.backend, rank),
        topology.head_address,
    )


def with_rank(config: Config, rank: int) -> Config:
    """`config` as the host of `rank` reads it (`check --all-hosts` renders every rank)."""
    topology = config.topology.model_copy(update={"rank": rank})
    return config.model_copy(update={"topology": topology})


def _rank_from(environ: Mapping[str, str]) -> int:
    text = environ.get(RANK_ENV)
    if text is None:
        raise RoleError(
            "topology.rank",
            f"this host's rank is not set: topology.rank is absent and {RANK_ENV} is unset",
            f"set {RANK_ENV}=N in the host's environment (0 on the head), or topology.rank",
        )
    digits = text.strip()
    # str.isdigit() and int() also take other scripts' digits (U+FF10, full-width 0): ASCII only.
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _RANK_DIGITS):
        raise RoleError(
            RANK_ENV,
            f"{text[:40]!r} is not a rank",
            "write a whole number in ASCII digits, 0 on the head",
        )
    return int(digits)


def _role_of(backend: str, rank: int) -> Role:
    if rank == 0:
        return Role.HEAD
    return Role.RAY_WORKER if backend == "ray" else Role.HEADLESS
