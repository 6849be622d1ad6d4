"""Helpers of the real-vLLM tier: demo configs and the figures printed at the end of a run."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml

from harness import REPO
from niodoo_supervisor.demo.model import DemoModel

FIGURES: list[str] = []


def record_figure(text: str) -> None:
    """A duration worth showing the reader; printed in the run's summary."""
    FIGURES.append(text)
    print(f"[figure] {text}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_demo_config(tmp: Path, vllm_python: str, model: DemoModel) -> Path:
    """config/demo-cpu.yaml with absolute paths, a free port, a private state folder and
    probe timings short enough for tests."""
    config = yaml.safe_load((REPO / "config" / "demo-cpu.yaml").read_text())
    config["server"]["python"] = vllm_python
    config["server"]["port"] = free_port()
    config["model"]["path"] = str(model.base)
    config["lora"]["adapters"] = [
        {"name": "alpha", "path": str(model.adapters["alpha"])},
        {"name": "beta", "path": str(model.adapters["beta"])},
    ]
    config["supervisor"]["state_dir"] = str(tmp / "state")
    config["supervisor"]["health"] = {
        "interval": 1,
        "startup_interval": 0.5,
        "timeout": 3,
        "failure_threshold": 2,
    }
    config["supervisor"]["restart"] = {
        "initial_delay": 0.5,
        "max_delay": 5,
        "max_starts": 6,
        "window": 600,
    }
    path = tmp / "niodoo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def port_of(config: Path) -> int:
    data: dict[str, Any] = yaml.safe_load(config.read_text())
    return int(data["server"]["port"])
