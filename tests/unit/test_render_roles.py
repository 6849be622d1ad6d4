"""`render` on a host of a topology: the role line, the Ray node's command, and a `ray-worker`
that runs no vLLM (launch/render.py's format_role, cli/main.py's render)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"


def _config(tmp_path: Path, topology: dict[str, object]) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    document = {
        "server": {
            "python": sys.executable,
            "launcher": "serve",
            "env": {"PYTHONPATH": str(FAKE_VLLM)},
        },
        "model": {"path": str(model)},
        "engine": {"data_parallel_size": 2},
        "supervisor": {"state_dir": str(tmp_path / "state")},
        "topology": {"nodes": 2, "head_address": "10.0.0.1", **topology},
    }
    path = tmp_path / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["render", *args])
    return code, capsys.readouterr().out.splitlines()


def test_render_names_the_role_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, {"backend": "dp", "rank": 1, "watch_head": False})
    code, out = _render(capsys, "-c", str(config), "--one-line")
    assert code == exitcodes.OK
    assert out[0] == "# rank 1 of 2 (headless, dp)"
    assert out[1].endswith("--headless --data-parallel-start-rank 1")


def test_render_shows_the_ray_nodes_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, {"backend": "ray", "rank": 0})
    code, out = _render(capsys, "-c", str(config), "--one-line")
    assert code == exitcodes.OK
    ray = str(Path(sys.executable).parent / "ray")
    assert out[:2] == [
        "# rank 0 of 2 (head, ray)",
        f"# companion ray (started before vLLM): {ray} start --head --port=6379 --block",
    ]
    # engine.data_parallel_size is 2: its engines over Ray, one per host
    assert out[2].endswith(
        "--distributed-executor-backend ray --data-parallel-size-local 1 --data-parallel-backend ray"
    )


def test_render_of_a_ray_worker_says_it_runs_no_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, {"backend": "ray", "rank": 1})
    code, out = _render(capsys, "-c", str(config))
    assert code == exitcodes.OK
    assert out[0] == "# rank 1 of 2 (ray-worker, ray)"
    assert out[2] == "# no vLLM on this host"
    code, out = _render(capsys, "-c", str(config), "--json")
    shown = json.loads("\n".join(out))
    assert shown["argv"] == [] and shown["role"] == "rank 1 of 2 (ray-worker, ray)"
    assert shown["companion"]["argv"][1:] == ["start", "--address=10.0.0.1:6379", "--block"]


def test_render_on_a_single_host_is_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, {"backend": "none", "nodes": 1})
    code, out = _render(capsys, "-c", str(config), "--json")
    assert code == exitcodes.OK
    assert set(json.loads("\n".join(out))) == {"argv", "env"}
