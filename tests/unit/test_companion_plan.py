"""What is spawned when a plan has a companion: the session keeper with its spec."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from niodoo_supervisor.launch.topology import CompanionPlan, HostRole, Role
from niodoo_supervisor.supervise.companion import KEEPER_FILE, session_argv
from supervise_sim import sim_config, sim_plan

RAY = CompanionPlan("ray", ("ray", "start", "--head", "--port=6379", "--block"), {"A": "1"})


def test_without_a_companion_vllm_leads_its_session(tmp_path: Path) -> None:
    plan = sim_plan("python3", "-m", "vllm")
    assert session_argv(sim_config(tmp_path), plan) == ("python3", "-m", "vllm")
    assert not (tmp_path / "state" / KEEPER_FILE).exists()


def test_a_ray_head_waits_for_its_ray_port_then_runs_vllm(tmp_path: Path) -> None:
    config = sim_config(tmp_path)
    role = HostRole("ray", 0, 2, Role.HEAD, "10.13.0.1")
    plan = dataclasses.replace(sim_plan("python3", "-m", "vllm"), role=role, companion=RAY)
    python, keeper, spec = session_argv(config, plan)
    assert python == config.server.python
    assert Path(keeper) == Path(config.state_dir) / KEEPER_FILE
    assert "def main" in Path(keeper).read_text()
    assert json.loads(spec) == {
        "name": "ray",
        "companion": ["ray", "start", "--head", "--port=6379", "--block"],
        "companion_env": {"A": "1"},
        "wait_for": ["10.13.0.1", 6379],
        "vllm": ["python3", "-m", "vllm"],
    }


def test_a_ray_worker_runs_the_companion_alone(tmp_path: Path) -> None:
    role = HostRole("ray", 1, 2, Role.RAY_WORKER, "10.13.0.1")
    plan = dataclasses.replace(sim_plan("python3"), role=role, companion=RAY)
    spec = json.loads(session_argv(sim_config(tmp_path), plan)[2])
    assert spec["vllm"] is None
    assert spec["wait_for"] is None
