"""The fault tier's supervisor: a config that runs the fake vLLM (`tests/fakevllm/`) with
fault switches, and the checks every test ends with."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

from harness import REPO, SupervisorRun, launched_pids, sessions_descended_from, wait_for

FAKE_PATH = REPO / "tests" / "fakevllm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_adapter(path: Path, rank: int, base: str) -> None:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": base})
    )
    (path / "adapter_model.safetensors").write_bytes(b"")


def make_config(tmp: Path, faults: str = "", **overrides: object) -> Path:
    model = tmp / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 256})
    )
    if not (tmp / "adapters").exists():
        write_adapter(tmp / "adapters" / "a", 8, str(model))
        write_adapter(tmp / "adapters" / "b", 16, str(model))
    config: dict[str, object] = {
        "server": {
            "python": sys.executable,
            "port": free_port(),
            "env": {"PYTHONPATH": str(FAKE_PATH), "FAKE_VLLM_FAULTS": faults or "load_seconds=0.2"},
        },
        "model": {"path": str(model), "served_name": "tiny"},
        "lora": {
            "enabled": True,
            "max_loras": 2,
            "max_lora_rank": 16,
            "adapters": [{"name": "a", "path": "adapters/a"}, {"name": "b", "path": "adapters/b"}],
        },
        "supervisor": {
            "state_dir": str(tmp / "state"),
            "startup_timeout": 30,
            "startup_stall_timeout": 10,
            "health": {
                "interval": 0.3,
                "startup_interval": 0.1,
                "timeout": 1,
                "failure_threshold": 2,
            },
            "restart": {"initial_delay": 0.2, "max_delay": 1, "max_starts": 5, "window": 60},
            "stop": {"grace_period": 2},
            "log": {"crash_report_lines": 20},
        },
    }
    for dotted, value in overrides.items():
        node: dict[str, object] = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    path = tmp / "niodoo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


Launcher = Callable[..., SupervisorRun]


def assert_nothing_left(run: SupervisorRun) -> None:
    wait_for(lambda: not sessions_descended_from(run), 10, "vLLM's processes to be gone")
    for pid in launched_pids(run):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def wait_ready_count(run: SupervisorRun, count: int) -> None:
    wait_for(lambda: run.states().count("READY") >= count, 30, f"READY number {count}")


def status_command(run: SupervisorRun) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", "status", "-c", str(run.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def stop(run: SupervisorRun) -> int:
    run.signal(signal.SIGTERM)
    return run.wait_exit(30)
