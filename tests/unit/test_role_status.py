"""The status of a host's role: status.json's `role` object, the `role:` line of `status`
(only on a host of a multi-host topology) and the `niodoo_host_role_info` metric."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from niodoo_supervisor.cli.status_fields import checked
from niodoo_supervisor.cli.status_view import human
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.gpu.nvml import GpuDevice, GpuProcess
from niodoo_supervisor.launch.topology import host_role
from niodoo_supervisor.supervise.role_status import RoleMetric, role_line, role_object
from niodoo_supervisor.supervise.status_file import STATUS_FILE, StatusBoard
from role_configs import HEAD, config_of, rank_of
from supervise_sim import Sim, boots, sim_config

NOW = 1_800_000_000.0
GIB = 1 << 30


def rank(tmp: Path, backend: str, number: int, **topology: Any) -> Config:
    return rank_of(tmp, backend, number, **topology)


def role_of(config: Config) -> dict[str, Any]:
    return role_object(config, host_role(config, {}))


def test_a_headless_dp_rank_sees_its_tree_and_the_heads_health(tmp_path: Path) -> None:
    assert role_of(rank(tmp_path, "dp", 1)) == {
        "backend": "dp",
        "rank": 1,
        "nodes": 2,
        "role": "headless",
        "api_server": False,
        "sees": [
            "vLLM process tree",
            "vLLM's start-up log",
            "head http://10.13.0.1:8123/health reachability",
        ],
        "cannot_see": ["requests (no HTTP server on this host)", "the other hosts' processes"],
    }


def test_a_headless_mp_rank_watches_the_master_port(tmp_path: Path) -> None:
    role = role_of(rank(tmp_path, "mp", 1, master_port=29614))
    assert role["sees"][-1] == "head 10.13.0.1:29614 reachability"


def test_an_unwatched_head_is_among_what_it_cannot_see(tmp_path: Path) -> None:
    role = role_of(rank(tmp_path, "mp", 1, watch_head=False))
    assert role["sees"] == ["vLLM process tree", "vLLM's start-up log"]
    assert role["cannot_see"][-1] == "the head (topology.watch_head is off)"


def test_a_ray_worker_sees_its_ray_node_and_the_ray_head(tmp_path: Path) -> None:
    role = role_of(rank(tmp_path, "ray", 1, ray_port=6380))
    assert role["role"] == "ray-worker"
    assert role["sees"] == [
        "the Ray node (companion) process",
        "head 10.13.0.1:6380 reachability",
    ]
    assert role["cannot_see"][0] == "requests (no vLLM on this host)"


def test_a_head_has_the_api_server_and_cannot_see_a_dead_peer(tmp_path: Path) -> None:
    role = role_of(rank(tmp_path, "ray", 0))
    assert role["api_server"] is True
    assert "the Ray head (companion) process" in role["sees"]
    assert "a dead peer rank, until a request reaches it" in role["cannot_see"]


def test_a_dp_head_that_asks_its_engines_sees_them_and_no_dead_peer_hides(
    tmp_path: Path,
) -> None:
    role = role_of(rank(tmp_path, "dp", 0))
    assert role["sees"] == [
        "vLLM process tree",
        "vLLM's HTTP API (/health, /v1/models)",
        "each data-parallel engine (a 1-token completion per liveness check)",
    ]
    assert role["cannot_see"] == ["the other hosts' processes"]
    unchecked = role_of(rank(tmp_path, "dp", 0, check_engines=False))
    assert unchecked["sees"] == role["sees"][:2]
    assert unchecked["cannot_see"] == [
        "the other hosts' processes",
        "a dead peer rank, until a request reaches it",
    ]


def test_a_single_host_is_single(tmp_path: Path) -> None:
    role = role_of(config_of(tmp_path))
    assert (role["role"], role["backend"], role["api_server"], role["cannot_see"]) == (
        "single",
        "none",
        True,
        [],
    )


def test_a_host_whose_gpus_nvml_reads_sees_them(tmp_path: Path) -> None:
    config = rank(tmp_path, "mp", 1, watch_head=False)
    role = role_object(config, host_role(config, {}), gpus=True)
    assert role["sees"] == [
        "vLLM process tree",
        "this host's GPUs (NVML): memory used and the session's processes on them",
        "vLLM's start-up log",
    ]


# --- in the supervisor's loop (virtual time) --------------------------------------------------


class HeldGpu:
    """NVML with one 24 GiB GPU, 21 GiB of it held by a stranger until `free()`."""

    def __init__(self) -> None:
        self.held = 21 * GIB

    def free(self) -> None:
        self.held = 0

    async def open(self) -> None:
        pass

    async def devices(self, visible: str | None) -> list[GpuDevice]:
        total, stranger = 24 * GIB, (GpuProcess(4_190_001, self.held, "python"),)
        used = self.held
        return [GpuDevice(0, "GPU-0", "NVIDIA Sim", total, total - used, used, stranger)]

    def close(self) -> None:
        pass


def test_the_role_is_shown_while_the_first_start_waits_for_gpu_memory(tmp_path: Path) -> None:
    topology = {"backend": "mp", "nodes": 2, "rank": 1, "head_address": HEAD}
    gpu = HeldGpu()
    sim = Sim(tmp_path, [boots(5)], config=sim_config(tmp_path, topology=topology), gpu_source=gpu)
    seen: dict[str, Any] = {}

    def look(when: str) -> None:
        status = sim.supervisor.reporter.status
        written = json.loads((tmp_path / "state" / STATUS_FILE).read_text())
        metric = generate_latest(sim.supervisor.metrics_registry).decode()
        seen[when] = (status.gpu_wait is not None, written["role"], metric)

    sim.at(3, lambda: look("waiting"))
    sim.at(10, gpu.free)
    sim.at(60, lambda: look("running"))
    sim.at(70, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    waiting, role, metric = seen["waiting"]
    assert waiting  # no vLLM started yet
    assert (role["role"], role["rank"], role["api_server"]) == ("headless", 1, False)
    assert 'niodoo_host_role_info{backend="mp",rank="1",role="headless"} 1.0' in metric
    _, role, _ = seen["running"]
    assert (
        "this host's GPUs (NVML): memory used and the session's processes on them" in (role["sees"])
    )


# --- the `role:` line -------------------------------------------------------------------------


def lines_of(**fields: Any) -> list[str]:
    status, wrong = checked({**StatusBoard(state="READY").to_dict(), **fields})
    assert wrong == []
    return human(status, True, NOW)


def test_status_says_the_role_after_serving(tmp_path: Path) -> None:
    lines = lines_of(role=role_of(rank(tmp_path, "dp", 1)))
    assert lines[1].startswith("serving:")
    assert lines[2] == (
        "role:      headless rank 1 of 2 (dp), no API server here; cannot see: requests (no "
        "HTTP server on this host), the other hosts' processes"
    )
    assert lines[3].startswith("trouble:")


def test_a_single_host_shows_no_role_line(tmp_path: Path) -> None:
    for role in (role_of(config_of(tmp_path)), None):
        lines = lines_of(role=role)
        assert not any(line.startswith("role:") for line in lines)
        assert lines[2].startswith("trouble:")


@pytest.mark.parametrize(
    "damaged",
    [{"role": 7}, {"role": "headless\x1b[2J", "rank": [1]}, {"role": "x", "cannot_see": "a"}],
)
def test_a_damaged_role_never_breaks_status(damaged: object) -> None:
    lines = human(checked({**StatusBoard(state="READY").to_dict(), "role": damaged})[0], True, NOW)
    role = [line for line in lines if line.startswith("role:")]
    assert all("\x1b" not in line for line in role)


def test_a_role_of_the_wrong_type_is_dropped_and_named() -> None:
    _, wrong = checked({**StatusBoard(state="READY").to_dict(), "role": ["headless"]})
    assert wrong == ["role"]


def test_role_line_is_none_without_a_role() -> None:
    assert role_line(None) is None
    assert role_line({"role": "single"}) is None


# --- the metric -------------------------------------------------------------------------------


def test_the_role_metric_labels_backend_role_and_rank(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    RoleMetric(registry).set(host_role(rank(tmp_path, "dp", 1), {}))
    text = generate_latest(registry).decode()
    assert 'niodoo_host_role_info{backend="dp",rank="1",role="headless"} 1.0' in text
