"""Preflight of a host in a topology (launch/topology_preflight.py): the head's port from rank
> 0 (a warning: the head may start later), the local GPUs against this host's part, and a host
name resolving to loopback with mp. Real sockets on 127.0.0.1 and temporary folders."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.launch.preflight import PreflightOptions, preflight
from niodoo_supervisor.launch.topology_preflight import check_topology_host

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"
Found = tuple[str, str, bool]  # key, message, warning
# dp's other hosts watch the head's HTTP: it listens beyond loopback (topology_relations.py).
DP_HEAD_HOST = ", host: 0.0.0.0"


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once closed


def _config(tmp_path: Path, topology: str, engine: str = "{}", server: str = "") -> Config:
    text = (
        f"server: {{python: /v/bin/python, launcher: serve, port: 8100{server}}}\n"
        f"model: {{path: /models/m}}\nsupervisor: {{state_dir: {tmp_path / 'state'}}}\n"
        f"engine: {engine}\ntopology: {topology}\n"
    )
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None, [problem.format() for problem in problems]
    return config


def _gpus(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "gpus"
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"0000:0{index}:00.0").mkdir()
    return folder


def _check(
    config: Config,
    environ: dict[str, str] | None = None,
    *,
    gpus_dir: Path | None = None,
    resolve: str | None = "10.1.2.3",
    network: bool = True,
) -> tuple[list[Found], list[str]]:
    found: list[Found] = []

    def report(path: str, message: str, fix: str = "", *, warning: bool = False) -> None:
        found.append((path, f"{message}; {fix}", warning))

    notes = check_topology_host(
        config,
        environ or {},
        report,
        network=network,
        gpus_dir=gpus_dir or Path("/nonexistent/nvidia/gpus"),
        resolve=lambda: resolve,
    )
    return found, notes


MP_WORKER = "{backend: mp, nodes: 2, rank: 1, head_address: 127.0.0.1, master_port: %d}"


def test_a_reachable_heads_port_is_no_problem(tmp_path: Path, listener: int) -> None:
    config = _config(tmp_path, MP_WORKER % listener, "{tensor_parallel_size: 2}")
    assert _check(config)[0] == []


def test_an_unreachable_head_is_a_warning_saying_it_may_start_later(tmp_path: Path) -> None:
    port = _closed_port()
    config = _config(tmp_path, MP_WORKER % port, "{tensor_parallel_size: 2}")
    [(key, line, warning)] = _check(config)[0]
    assert (key, warning) == ("topology.head_address", True)
    assert f"the head 127.0.0.1 does not answer on {port}: Connection refused" in line
    assert "fine if it starts later" in line


def test_the_head_itself_and_render_try_no_connection(tmp_path: Path) -> None:
    port = _closed_port()
    head = _config(
        tmp_path, MP_WORKER.replace("rank: 1", "rank: 0") % port, "{tensor_parallel_size: 2}"
    )
    assert _check(head)[0] == []
    worker = _config(tmp_path, MP_WORKER % port, "{tensor_parallel_size: 2}")
    assert _check(worker, network=False)[0] == []


def test_dp_counts_the_heads_http_port_when_the_handshake_port_is_closed(
    tmp_path: Path, listener: int
) -> None:
    # The head opens its handshake port only while it starts; once serving, its HTTP port
    # answers instead.
    topology = (
        "{backend: dp, nodes: 2, rank: 1, head_address: 127.0.0.1, "
        f"data_parallel_rpc_port: {_closed_port()}}}"
    )
    config = _config(tmp_path, topology, "{data_parallel_size: 2}", DP_HEAD_HOST)
    server = config.server.model_copy(update={"port": listener})
    assert _check(config.model_copy(update={"server": server}))[0] == []


def test_ray_worker_tries_the_ray_port(tmp_path: Path, listener: int) -> None:
    topology = f"{{backend: ray, nodes: 2, rank: 1, head_address: 127.0.0.1, ray_port: {listener}}}"
    assert _check(_config(tmp_path, topology))[0] == []


def test_a_cpu_host_skips_the_gpu_count_with_a_note(tmp_path: Path, listener: int) -> None:
    config = _config(tmp_path, MP_WORKER % listener, "{tensor_parallel_size: 2}")
    found, notes = _check(config, gpus_dir=tmp_path / "absent")
    assert found == []
    assert notes == [
        f"not checked: the GPUs for this host's part, because {tmp_path / 'absent'} is absent "
        "(a CPU host)"
    ]


def test_too_few_gpus_for_this_hosts_part_is_an_error(tmp_path: Path, listener: int) -> None:
    # TP 4 x PP 2 over 2 hosts: 4 GPUs per host.
    engine = "{tensor_parallel_size: 4, pipeline_parallel_size: 2}"
    config = _config(tmp_path, MP_WORKER % listener, engine)
    [(key, line, warning)] = _check(config, gpus_dir=_gpus(tmp_path, 2))[0]
    assert (key, warning) == ("topology.nodes", False)
    assert line.startswith(
        "this host (rank 1 of 2 (headless, mp)) needs 4 GPU(s) for its part but sees 2"
    )


def test_enough_gpus_is_no_problem_and_cuda_visible_devices_counts_the_usable_ones(
    tmp_path: Path, listener: int
) -> None:
    config = _config(tmp_path, MP_WORKER % listener, "{tensor_parallel_size: 4}")
    gpus = _gpus(tmp_path, 2)
    assert _check(config, gpus_dir=gpus) == ([], [])
    [(_, line, _)] = _check(config, {"CUDA_VISIBLE_DEVICES": "1"}, gpus_dir=gpus)[0]
    assert "needs 2 GPU(s) for its part but sees 1 (CUDA_VISIBLE_DEVICES)" in line
    mig = "MIG-1,MIG-2,MIG-3"  # two MIG instances on one of the GPUs would be enough too
    assert _check(config, {"CUDA_VISIBLE_DEVICES": mig}, gpus_dir=_gpus(tmp_path / "one", 1)) == (
        [],
        [],
    )


def test_dp_needs_its_local_engines_times_their_gpus(tmp_path: Path, listener: int) -> None:
    topology = (
        "{backend: dp, nodes: 2, rank: 1, head_address: 127.0.0.1, "
        f"data_parallel_rpc_port: {listener}}}"
    )
    engine = "{data_parallel_size: 4, tensor_parallel_size: 2}"
    config = _config(tmp_path, topology, engine, DP_HEAD_HOST)
    [(_, line, _)] = _check(config, gpus_dir=_gpus(tmp_path, 3))[0]
    assert "needs 4 GPU(s)" in line


def test_mp_with_a_host_name_on_loopback_warns_naming_gloo(tmp_path: Path, listener: int) -> None:
    config = _config(tmp_path, MP_WORKER % listener, "{tensor_parallel_size: 2}")
    [(key, line, warning)] = _check(config, resolve="127.0.1.1")[0]
    assert (key, warning) == ("server.env", True)
    assert "resolves to 127.0.1.1" in line and "set GLOO_SOCKET_IFNAME" in line
    assert _check(config, {"GLOO_SOCKET_IFNAME": "eth0"}, resolve="127.0.1.1")[0] == []
    set_in_config = _config(
        tmp_path,
        MP_WORKER % listener,
        "{tensor_parallel_size: 2}",
        ", env: {GLOO_SOCKET_IFNAME: v0}",
    )
    assert _check(set_in_config, resolve="127.0.1.1")[0] == []


def test_a_rank_that_cannot_be_known_is_an_error(tmp_path: Path) -> None:
    topology = "{backend: dp, nodes: 2, head_address: 10.0.0.1}"
    config = _config(tmp_path, topology, "{data_parallel_size: 2}", DP_HEAD_HOST)
    [(key, line, warning)] = _check(config, {"NIODOO_NODE_RANK": "one"})[0]
    assert (key, warning) == ("NIODOO_NODE_RANK", False)
    assert "'one' is not a rank" in line


def test_preflight_of_a_headless_host_ignores_a_taken_http_port(tmp_path: Path) -> None:
    """The head's HTTP port is taken here (as on one machine with the head): a headless host
    serves no HTTP, so that is no problem; the single host's preflight reports it."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        document = {
            "server": {
                "python": sys.executable,
                "launcher": "serve",
                "host": "127.0.0.1",
                "port": port,
                "env": {"PYTHONPATH": str(FAKE_VLLM), "GLOO_SOCKET_IFNAME": "lo"},
            },
            "model": {"path": str(model)},
            "engine": {"tensor_parallel_size": 2},
            "supervisor": {"state_dir": str(tmp_path / "state")},
            "topology": {
                "backend": "mp",
                "nodes": 2,
                "rank": 1,
                "head_address": "127.0.0.1",
                "master_port": port,  # the head answers
            },
        }
        config, _ = parse_config(yaml.safe_dump(document), base_dir=tmp_path, environ={})
        assert config is not None
        options = PreflightOptions(check_flags=False)
        result = preflight(config, {"HOME": str(tmp_path)}, options)
        assert [p.path for p in result.problems if p.path.startswith("server.")] == []
        single = config.model_copy(
            update={"topology": config.topology.model_copy(update={"backend": "none"})}
        )
        result = preflight(single, {"HOME": str(tmp_path)}, options)
        assert "server.port" in [p.path for p in result.problems]
