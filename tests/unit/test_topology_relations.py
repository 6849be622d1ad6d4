"""Checks between `topology` and the keys it renders with (config/topology_relations.py): one
line per problem naming the key and the fix; keys of another backend are warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.config.problems import Problem

BASE = "server: {python: /v/bin/python, launcher: serve}\nmodel: {path: /models/m}\n"
MP = "topology: {backend: mp, nodes: 2, head_address: 10.0.0.1}\n"
DP = "topology: {backend: dp, nodes: 2, head_address: 10.0.0.1}\n"
# dp's other hosts watch the head's HTTP: it listens on the address they reach it at.
DP_BASE = BASE.replace("launcher: serve", "launcher: serve, host: 10.0.0.1, api_key_env: KEY")


def _problems(tmp_path: Path, text: str) -> tuple[Config | None, list[Problem]]:
    return parse_config(text, base_dir=tmp_path, environ={})


def _lines(tmp_path: Path, text: str) -> list[tuple[str, str, bool]]:
    """(key, message and fix, is an error) per problem."""
    _, problems = _problems(tmp_path, text)
    return [(p.path, f"{p.message}; {p.fix}", p.is_error) for p in problems]


@pytest.mark.parametrize(
    "text",
    [
        BASE + "engine: {tensor_parallel_size: 2}\n" + MP,
        BASE + "engine: {tensor_parallel_size: 2, pipeline_parallel_size: 3}\n" + MP,
        DP_BASE + "engine: {data_parallel_size: 4}\n" + DP,
        DP_BASE
        + "engine: {data_parallel_size: 2}\n"
        + "topology: {backend: dp, nodes: 2, head_address: h, data_parallel_size_local: 1}\n",
        BASE + "topology: {backend: ray, nodes: 3, head_address: ray-head}\n",
        BASE + "engine: {tensor_parallel_size: 2}\n" + MP.replace("}", ", master_port: 29600}"),
    ],
)
def test_valid_topologies_have_no_problem(tmp_path: Path, text: str) -> None:
    config, problems = _problems(tmp_path, text)
    assert problems == [] and config is not None


def test_a_backend_needs_two_hosts_and_the_heads_address(tmp_path: Path) -> None:
    text = BASE + "engine: {tensor_parallel_size: 2}\ntopology: {backend: mp, nodes: 1}\n"
    assert _lines(tmp_path, text) == [
        (
            "topology.nodes",
            "topology.backend mp spans hosts, but topology.nodes is 1; set topology.nodes to "
            "the number of hosts, or topology.backend: none",
            True,
        ),
        (
            "topology.head_address",
            "topology.backend mp needs the head's address; set topology.head_address to the "
            "address the other hosts reach rank 0 at",
            True,
        ),
    ]


def test_the_module_launcher_with_a_backend_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    text = DP_BASE.replace("launcher: serve", "launcher: module") + DP.replace("}", ", rank: 0}")
    text += "engine: {data_parallel_size: 2}\n"
    [(key, line, error)] = _lines(tmp_path, text)
    assert (key, error) == ("server.launcher", True)
    assert line.endswith("set server.launcher: serve")


def test_a_rank_at_or_above_the_hosts_is_an_error(tmp_path: Path) -> None:
    text = BASE + "engine: {tensor_parallel_size: 2}\n" + MP.replace("}", ", rank: 2}")
    assert _lines(tmp_path, text) == [
        (
            "topology.rank",
            "rank 2 is not below topology.nodes (2); ranks run from 0 (the head) to 1",
            True,
        )
    ]


def test_mp_hosts_must_divide_the_world_size(tmp_path: Path) -> None:
    text = BASE + "engine: {tensor_parallel_size: 3}\n" + MP
    [(key, line, error)] = _lines(tmp_path, text)
    assert (key, error) == ("topology.nodes", True)
    assert "2 hosts do not divide vLLM's world size (tensor 3 x pipeline 1 x data 1 = 3)" in line


@pytest.mark.parametrize(
    "extra", ["[--data-parallel-backend, ray]", "['--data-parallel-backend=ray']"]
)
def test_mp_refuses_the_ray_data_parallel_backend(tmp_path: Path, extra: str) -> None:
    text = BASE.replace("launcher: serve", f"launcher: serve, extra_args: {extra}")
    text += "engine: {tensor_parallel_size: 2}\n" + MP
    [(key, line, error)] = _lines(tmp_path, text)
    assert (key, error) == ("server.extra_args", True)
    assert line.startswith("--data-parallel-backend ray cannot span hosts with --nnodes")


def test_flags_the_topology_renders_are_refused_in_extra_args(tmp_path: Path) -> None:
    text = BASE.replace("launcher: serve", "launcher: serve, extra_args: ['--node-rank=1']")
    text += "engine: {tensor_parallel_size: 2}\n" + MP
    assert _lines(tmp_path, text) == [
        (
            "server.extra_args",
            "--node-rank is rendered from topology (backend mp) for each host's rank; remove "
            "it from server.extra_args",
            True,
        )
    ]


@pytest.mark.parametrize(
    ("engine", "topology", "key", "words"),
    [
        ("{data_parallel_size: 1}", "", "engine.data_parallel_size", "below topology.nodes (2)"),
        (
            "{data_parallel_size: 3}",
            ", data_parallel_size_local: 2",
            "topology.data_parallel_size_local",
            "2 hosts x 2 engines each = 4, not engine.data_parallel_size (3)",
        ),
        ("{data_parallel_size: 3}", "", "engine.data_parallel_size", "cannot be shared evenly"),
    ],
)
def test_dp_sizes(tmp_path: Path, engine: str, topology: str, key: str, words: str) -> None:
    text = DP_BASE + f"engine: {engine}\n" + DP.replace("}", topology + "}")
    [(found, line, error)] = _lines(tmp_path, text)
    assert (found, error) == (key, True)
    assert words in line


def test_keys_of_another_backend_are_warnings(tmp_path: Path) -> None:
    text = DP_BASE + "engine: {data_parallel_size: 2}\n"
    text += DP.replace("}", ", master_port: 29600, ray_port: 6380}")
    config, problems = _problems(tmp_path, text)
    assert config is not None  # warnings only
    assert [(p.path, p.message, p.is_error) for p in problems] == [
        (
            "topology.master_port",
            "topology.master_port is read only with backend mp; with dp it is ignored",
            False,
        ),
        (
            "topology.ray_port",
            "topology.ray_port is read only with backend ray; with dp it is ignored",
            False,
        ),
    ]


def test_topology_keys_without_a_backend_are_warnings(tmp_path: Path) -> None:
    text = BASE + "topology: {nodes: 2, head_address: 10.0.0.1}\n"
    config, problems = _problems(tmp_path, text)
    assert config is not None
    assert [p.path for p in problems] == ["topology.head_address", "topology.nodes"]
    assert all("ignored with topology.backend none" in p.message for p in problems)


def test_a_wrong_engine_key_skips_the_size_checks(tmp_path: Path) -> None:
    text = BASE + "engine: {tensor_parallel_size: many}\n" + MP
    _, problems = _problems(tmp_path, text)
    assert [p.path for p in problems] == ["engine.tensor_parallel_size"]


def test_each_problem_is_one_line_naming_its_key(tmp_path: Path) -> None:
    text = BASE + "engine: {tensor_parallel_size: 3}\ntopology: {backend: mp, nodes: 2}\n"
    _, problems = _problems(tmp_path, text)
    for problem in problems:
        formatted = problem.format()
        assert "\n" not in formatted and problem.path in formatted


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "::1", "localhost"])
def test_dp_watching_a_head_that_listens_on_loopback_is_an_error(tmp_path: Path, host: str) -> None:
    # The other hosts watch http://head_address:server.port/health: a head on loopback
    # never answers them, and they restart for ever.
    text = DP_BASE.replace("host: 10.0.0.1", f"host: '{host}'")
    text += "engine: {data_parallel_size: 2}\n" + DP
    assert _lines(tmp_path, text) == [
        (
            "server.host",
            f"the head's API listens on loopback only ({host}); the other hosts' head watch "
            "cannot reach it; set server.host: 0.0.0.0 (with an API key) or the private "
            "address, or topology.watch_head: false",
            True,
        )
    ]


@pytest.mark.parametrize(
    "text",
    [
        BASE + "engine: {data_parallel_size: 2}\n" + DP.replace("}", ", watch_head: false}"),
        BASE + "engine: {tensor_parallel_size: 2}\n" + MP,  # watches the master port
        BASE + "topology: {backend: ray, nodes: 2, head_address: 10.0.0.1}\n",  # the Ray port
        # every rank on this machine: the head watch reaches a loopback head
        BASE + "engine: {data_parallel_size: 2}\n" + DP.replace("10.0.0.1", "127.0.0.1"),
    ],
)
def test_a_loopback_head_is_fine_when_nobody_watches_its_http(tmp_path: Path, text: str) -> None:
    assert _lines(tmp_path, text) == []


RAY = "topology: {backend: ray, nodes: 2, head_address: 10.0.0.1}\n"


def test_data_parallel_over_ray_reads_the_engines_per_host(tmp_path: Path) -> None:
    text = BASE + "engine: {data_parallel_size: 4}\n"
    assert _lines(tmp_path, text + RAY.replace("}", ", data_parallel_size_local: 2}")) == []
    [(key, line, error)] = _lines(
        tmp_path, text + RAY.replace("}", ", data_parallel_size_local: 3}")
    )
    assert (key, error) == ("topology.data_parallel_size_local", True)
    assert "2 hosts x 3 engines each = 6, not engine.data_parallel_size (4)" in line


def test_the_ray_data_parallel_backend_is_rendered_not_given(tmp_path: Path) -> None:
    text = BASE.replace(
        "launcher: serve", "launcher: serve, extra_args: [--data-parallel-backend, ray]"
    )
    text += "engine: {data_parallel_size: 2}\n" + RAY
    [(key, line, error)] = _lines(tmp_path, text)
    assert (key, error) == ("server.extra_args", True)
    assert line.startswith("--data-parallel-backend is rendered from topology (backend ray)")
