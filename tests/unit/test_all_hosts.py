"""`check --all-hosts` (cli/all_hosts.py): every rank's plan from the one YAML, one line per
host, and each disagreement between them named (exit 78)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.all_hosts import disagreements
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.topology import CompanionPlan, with_rank

BASE = (
    "server: {python: /opt/vllm/bin/python, launcher: serve, host: 127.0.0.1, port: 8100}\n"
    "model: {path: /models/tiny, served_name: tiny}\n"
)
TOPOLOGIES = {
    "mp": "engine: {tensor_parallel_size: 4}\n"
    "topology: {backend: mp, nodes: 4, head_address: 10.0.0.1}\n",
    "dp": "engine: {data_parallel_size: 6}\n"
    # The head listens on 127.0.0.1 (BASE): the other hosts cannot watch its HTTP.
    "topology: {backend: dp, nodes: 3, head_address: 10.0.0.1, watch_head: false}\n",
    "ray": "engine: {tensor_parallel_size: 2}\n"
    "topology: {backend: ray, nodes: 2, head_address: 10.0.0.1}\n",
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "niodoo.yaml"
    path.write_text(text + f"supervisor: {{state_dir: {tmp_path / 'state'}}}\n")
    return path


def _check(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, list[str]]:
    code = main(["check", "-c", str(config), "--all-hosts"])
    return code, capsys.readouterr().out.splitlines()


def _plans(tmp_path: Path, backend: str) -> list[LaunchPlan]:
    text = BASE + TOPOLOGIES[backend] + f"supervisor: {{state_dir: {tmp_path}}}\n"
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None, problems
    return [_plan(config, rank) for rank in range(config.topology.nodes)]


def _plan(config: Config, rank: int) -> LaunchPlan:
    return plan_launch(with_rank(config, rank), None, {}, read_secret=False)


def _swap(plan: LaunchPlan, old: str, new: str) -> LaunchPlan:
    return dataclasses.replace(plan, argv=tuple(new if arg == old else arg for arg in plan.argv))


@pytest.mark.parametrize("backend", sorted(TOPOLOGIES))
def test_every_backends_hosts_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    code, out = _check(capsys, _write(tmp_path, BASE + TOPOLOGIES[backend]))
    assert code == exitcodes.OK, out
    hosts = [line for line in out if line.startswith("rank ")]
    nodes = {"mp": 4, "dp": 3, "ray": 2}[backend]
    assert [line.split(":")[0] for line in hosts] == [
        "rank 0 (head)",
        *[
            f"rank {rank} ({'ray-worker' if backend == 'ray' else 'headless'})"
            for rank in range(1, nodes)
        ],
    ]
    assert out[-1].endswith(f"ok: the {nodes} hosts' plans agree ({backend})")


def test_a_dp_head_watched_on_loopback_fails_every_hosts_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + TOPOLOGIES["dp"].replace(", watch_head: false", "")
    code, out = _check(capsys, _write(tmp_path, text))
    assert code != exitcodes.OK
    assert any("the head's API listens on loopback only (127.0.0.1)" in line for line in out)
    assert not any("plans agree" in line for line in out)


def test_dp_hosts_show_their_start_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = _check(capsys, _write(tmp_path, BASE + TOPOLOGIES["dp"]))
    assert out[1].endswith("--headless --data-parallel-start-rank 2")
    assert out[2].endswith("--headless --data-parallel-start-rank 4")
    assert "--port" in out[0] and "--port" not in out[1]


def test_a_single_host_has_nothing_to_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, BASE)
    code, out = _check(capsys, config)
    assert (code, out) == (
        exitcodes.OK,
        [f"{config}: topology.backend is none: one host, nothing to compare"],
    )


def test_a_wrong_topology_is_the_configs_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + "engine: {tensor_parallel_size: 3}\n" + TOPOLOGIES["mp"].split("\n", 1)[1]
    code, out = _check(capsys, _write(tmp_path, text))
    assert code == exitcodes.CONFIG
    assert len(out) == 1 and "error: topology.nodes: 4 hosts do not divide" in out[0]


def test_agreeing_plans_have_no_disagreement(tmp_path: Path) -> None:
    for backend in TOPOLOGIES:
        assert disagreements(_plans(tmp_path, backend)) == []


def test_a_different_model_or_size_is_named(tmp_path: Path) -> None:
    plans = _plans(tmp_path, "dp")
    plans[2] = _swap(_swap(plans[2], "tiny", "other"), "/models/tiny", "/models/other")
    plans[1] = _swap(plans[1], "6", "8")  # --data-parallel-size
    assert disagreements(plans) == [
        "rank 1 renders --data-parallel-size 8, the head (rank 0) --data-parallel-size 6",
        "rank 2 renders --served-model-name other, the head (rank 0) --served-model-name tiny",
        "rank 2 renders -m vllm.entrypoints.cli.main serve /models/other, the head (rank 0) "
        "-m vllm.entrypoints.cli.main serve /models/tiny",
    ]


def test_a_flag_only_one_host_renders_is_named(tmp_path: Path) -> None:
    plans = _plans(tmp_path, "mp")
    plans[3] = dataclasses.replace(plans[3], argv=(*plans[3].argv, "--enforce-eager"))
    assert disagreements(plans) == [
        "rank 3 renders --enforce-eager, the head (rank 0) no --enforce-eager"
    ]


def test_a_wrong_rank_flag_or_role_switch_is_named(tmp_path: Path) -> None:
    plans = _plans(tmp_path, "mp")
    plans[2] = _swap(plans[2], "2", "1")  # --node-rank
    plans[3] = dataclasses.replace(plans[3], argv=plans[3].argv[:-1])  # without --headless
    dp = _plans(tmp_path, "dp")
    dp[1] = dataclasses.replace(dp[1], argv=(*dp[1].argv[:-1], "3"))  # its start rank
    assert disagreements(plans) == [
        "rank 2 renders --node-rank 1, not --node-rank 2",
        "rank 3 (headless) lacks --headless",
    ]
    assert disagreements(dp) == [
        "rank 1 renders --data-parallel-start-rank 3, not --data-parallel-start-rank 2"
    ]


def test_a_ray_node_joining_another_port_or_running_vllm_is_named(tmp_path: Path) -> None:
    plans = _plans(tmp_path, "ray")
    worker = plans[1]
    assert worker.companion is not None
    wrong = CompanionPlan("ray", ("ray", "start", "--address=10.0.0.1:7000", "--block"), {})
    plans[1] = dataclasses.replace(worker, companion=wrong, argv=plans[0].argv)
    assert disagreements(plans) == [
        "rank 1 (ray-worker) renders vLLM, which runs on the head only",
        "rank 1 joins Ray at 10.0.0.1:7000, the head listens on port 6379",
    ]
