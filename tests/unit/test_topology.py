"""This host's role in a topology (launch/topology.py's host_role): the rank from
topology.rank or NIODOO_NODE_RANK, and the role each rank plays per backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.launch.topology import (
    SINGLE_HOST,
    HostRole,
    Role,
    RoleError,
    host_role,
)

SERVER = "server: {python: /v/bin/python, launcher: serve}\nmodel: {path: /models/m}\n"


def _config(tmp_path: Path, backend: str, rank: str = "", nodes: int = 3) -> Config:
    engine = {"mp": "{tensor_parallel_size: 3}", "dp": "{data_parallel_size: 3}"}.get(backend)
    text = SERVER + (f"engine: {engine}\n" if engine else "")
    text += f"topology: {{backend: {backend}, nodes: {nodes}, head_address: 10.0.0.1, watch_head: false{rank}}}\n"
    text += "supervisor: {state_dir: %s}\n" % (tmp_path / "state")
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None, [problem.format() for problem in problems]
    return config


def _refusal(config: Config, environ: dict[str, str]) -> RoleError:
    with pytest.raises(RoleError) as raised:
        host_role(config, environ)
    return raised.value


def test_one_host_has_no_rank_to_find(tmp_path: Path) -> None:
    text = SERVER + f"supervisor: {{state_dir: {tmp_path}}}\n"
    config, _ = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None
    assert host_role(config, {}) is SINGLE_HOST


@pytest.mark.parametrize(
    ("backend", "rank", "role"),
    [
        ("mp", "0", Role.HEAD),
        ("mp", "2", Role.HEADLESS),
        ("dp", "1", Role.HEADLESS),
        ("ray", "0", Role.HEAD),
        ("ray", "2", Role.RAY_WORKER),
    ],
)
def test_each_rank_from_the_environment_plays_its_role(
    tmp_path: Path, backend: str, rank: str, role: Role
) -> None:
    found = host_role(_config(tmp_path, backend), {"NIODOO_NODE_RANK": rank})
    assert found == HostRole(backend, int(rank), 3, role, "10.0.0.1")


def test_topology_rank_wins_over_the_environment(tmp_path: Path) -> None:
    config = _config(tmp_path, "mp", ", rank: 1")
    assert host_role(config, {"NIODOO_NODE_RANK": "2"}).rank == 1


def test_surrounding_blanks_are_forgiven(tmp_path: Path) -> None:
    assert host_role(_config(tmp_path, "mp"), {"NIODOO_NODE_RANK": " 2\n"}).rank == 2


def test_a_missing_rank_names_both_places_to_set_it(tmp_path: Path) -> None:
    error = _refusal(_config(tmp_path, "mp"), {})
    assert error.key == "topology.rank"
    assert "NIODOO_NODE_RANK is unset" in error.message
    assert error.fix.startswith("set NIODOO_NODE_RANK=N")


@pytest.mark.parametrize(
    "text",
    [
        "one",
        "",
        "-1",
        "1.0",
        "+1",
        "０",  # a full-width digit: str.isdigit() and int() take it as 0
        "١",  # an Arabic-Indic one
        "²",  # superscript two: isdigit() but not int()
        "00001",  # more digits than the largest rank
        "9" * 5000,  # beyond Python's int() digit limit
    ],
)
def test_a_rank_that_is_not_ascii_digits_is_refused(tmp_path: Path, text: str) -> None:
    error = _refusal(_config(tmp_path, "mp"), {"NIODOO_NODE_RANK": text})
    assert error.key == "NIODOO_NODE_RANK"
    assert error.message.endswith("is not a rank") and len(error.message) < 80
    assert error.fix == "write a whole number in ASCII digits, 0 on the head"


@pytest.mark.parametrize(("rank", "nodes"), [("3", 3), ("1023", 2)])
def test_a_rank_at_or_above_the_hosts_is_refused(tmp_path: Path, rank: str, nodes: int) -> None:
    error = _refusal(_config(tmp_path, "ray", nodes=nodes), {"NIODOO_NODE_RANK": rank})
    assert error.key == "NIODOO_NODE_RANK"
    assert error.message == f"rank {rank} is not below topology.nodes ({nodes})"
    assert error.fix == f"ranks run from 0 (the head) to {nodes - 1}"
