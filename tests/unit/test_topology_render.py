"""Each backend and role renders vLLM's documented command (launch/topology_render.py).

Golden files: `golden/<backend>-<role>.yaml` is one host's config (the rank in it), and
`golden/<backend>-<role>.json` the plan's argv and companion it must render. After a deliberate
change, NIODOO_GOLDEN_UPDATE=1 rewrites the JSON files; review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.install import VllmInstall
from niodoo_supervisor.launch.plan import PlanError, plan_launch
from niodoo_supervisor.launch.topology import Role
from niodoo_supervisor.launch.topology_render import companion_for, data_parallel_size_local

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(path.stem for path in GOLDEN.glob("*.yaml"))
INSTALL = VllmInstall(
    "/opt/vllm/bin/python", Version(0, 32, 0), "0.32.0", "vllm", "/opt/vllm/lib/vllm"
)


def _config(text: str, environ: dict[str, str] | None = None) -> Config:
    config, problems = parse_config(text, base_dir=GOLDEN, environ=environ or {})
    assert config is not None, [problem.format() for problem in problems]
    return config


def _rendered(config: Config) -> dict[str, Any]:
    plan = plan_launch(config, INSTALL, {}, read_secret=False)
    companion = plan.companion
    return {
        "role": plan.role.describe,
        "argv": list(plan.argv),
        "companion": None
        if companion is None
        else {"name": companion.name, "argv": list(companion.argv), "env": dict(companion.env)},
    }


def test_every_backend_and_role_has_a_golden_case() -> None:
    assert CASES == [
        "dp-head",
        "dp-headless",
        "mp-head",
        "mp-headless",
        "none-single",
        "ray-head",
        "ray-head-dp",  # data parallel over Ray: its backend flag and engines per node
        "ray-worker",
    ]


@pytest.mark.parametrize("case", CASES)
def test_golden_render(case: str) -> None:
    rendered = _rendered(_config((GOLDEN / f"{case}.yaml").read_text()))
    expected_path = GOLDEN / f"{case}.json"
    if os.environ.get("NIODOO_GOLDEN_UPDATE"):
        expected_path.write_text(json.dumps(rendered, indent=1) + "\n")
    assert rendered == json.loads(expected_path.read_text())


BASE = (
    "server: {python: /opt/vllm/bin/python, launcher: serve, port: 8100}\n"
    "model: {path: /models/tiny}\nsupervisor: {state_dir: /var/lib/niodoo}\n"
)
MP_WORKER = (
    "engine: {tensor_parallel_size: 2}\n"
    "topology: {backend: mp, nodes: 2, rank: 1, head_address: 10.0.0.1}\n"
)


def test_the_rank_comes_from_the_environment_when_the_config_has_none() -> None:
    config = _config(
        BASE
        + "engine: {data_parallel_size: 4}\n"
        + "topology: {backend: dp, nodes: 2, head_address: 10.0.0.1, watch_head: false}\n"
    )
    plan = plan_launch(config, INSTALL, {"NIODOO_NODE_RANK": "1"}, read_secret=False)
    assert plan.role.role is Role.HEADLESS
    assert plan.argv[-3:] == ("--headless", "--data-parallel-start-rank", "2")


def test_a_backend_with_the_module_launcher_is_refused_naming_the_fix() -> None:
    # The config check refuses it first (test_topology_relations.py); the plan never renders
    # a headless role without `serve` even from a config that skipped it.
    config = _config(BASE + MP_WORKER)
    module = config.model_copy(
        update={"server": config.server.model_copy(update={"launcher": "module"})}
    )
    with pytest.raises(PlanError) as caught:
        plan_launch(module, INSTALL, {}, read_secret=False)
    assert caught.value.key == "server.launcher"
    assert caught.value.fix == "set server.launcher: serve"


def test_headless_drops_the_http_flags_with_their_values() -> None:
    config = _config(BASE + MP_WORKER)
    argv = plan_launch(config, INSTALL, {}, read_secret=False).argv
    assert "--host" not in argv and "--port" not in argv and "8100" not in argv


def test_server_extra_args_follow_the_role_flags() -> None:
    config = _config(
        BASE.replace("port: 8100}", "port: 8100, extra_args: [--enable-prefix-caching]}")
        + MP_WORKER
    )
    argv = plan_launch(config, INSTALL, {}, read_secret=False).argv
    assert argv[-2:] == ("--headless", "--enable-prefix-caching")


def test_the_ray_worker_runs_no_vllm_at_all() -> None:
    config = _config(
        BASE.replace("port: 8100}", "port: 8100, extra_args: [--enable-prefix-caching]}")
        + "topology: {backend: ray, nodes: 3, rank: 2, head_address: ray-head.internal}\n"
    )
    plan = plan_launch(config, INSTALL, {}, read_secret=False)
    assert plan.argv == ()
    assert plan.companion is not None
    assert plan.companion.argv == (
        "/opt/vllm/bin/ray",
        "start",
        "--address=ray-head.internal:6379",
        "--block",
    )


def test_ray_head_with_a_host_name_sets_no_vllm_host_ip() -> None:
    config = _config(
        BASE + "topology: {backend: ray, nodes: 2, rank: 0, head_address: ray-head.internal}\n"
    )
    companion = companion_for(config, plan_launch(config, INSTALL, {}, read_secret=False).role)
    assert companion is not None
    assert "VLLM_HOST_IP" not in companion.env


def test_the_operators_vllm_host_ip_wins_on_the_ray_head() -> None:
    config = _config(
        BASE.replace("port: 8100}", "port: 8100, env: {VLLM_HOST_IP: 10.9.9.9}}")
        + "topology: {backend: ray, nodes: 2, rank: 0, head_address: 10.0.0.1}\n"
    )
    plan = plan_launch(config, INSTALL, {}, read_secret=False)
    assert plan.companion is not None
    assert plan.companion.env["VLLM_HOST_IP"] == "10.9.9.9"


def test_ipv6_head_address_is_bracketed_for_ray() -> None:
    config = _config(
        BASE + "topology: {backend: ray, nodes: 2, rank: 1, head_address: 'fd00::1'}\n"
    )
    plan = plan_launch(config, INSTALL, {}, read_secret=False)
    assert plan.companion is not None
    assert "--address=[fd00::1]:6379" in plan.companion.argv


def test_data_parallel_size_local_defaults_to_an_even_share() -> None:
    config = _config(
        BASE
        + "engine: {data_parallel_size: 6}\n"
        + "topology: {backend: dp, nodes: 3, rank: 0, head_address: 10.0.0.1, watch_head: false}\n"
    )
    assert data_parallel_size_local(config) == 2
