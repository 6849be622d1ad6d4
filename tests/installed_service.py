"""The service as the README installs it, inside a booted container: names, the test config
(the fake vLLM run by the container's Python) and small helpers for the real-systemd tier."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness import REPO
from nspawn import Container

UNIT = "niodoo-supervisor.service"
CONFIG = "/etc/niodoo-supervisor/niodoo.yaml"
DROP_IN_DIR = f"/etc/systemd/system/{UNIT}.d"
SOURCE = "/usr/local/src/niodoo-supervisor"  # the checkout, as an operator would have it
WHEELS = "/var/cache/niodoo-test-wheels"
API_KEY = "test-key-0123"
PORT = 8000  # the container has its own network: no other test can hold it
# A model and adapters the fake vLLM accepts, where the service user can read them.
FAKE_MODEL = "/srv/niodoo/model"


def checkout_copy(target: Path) -> Path:
    """The checkout's files (tracked and new, not ignored ones such as .venv) in a writable
    folder: pip builds a local project in place."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def service_config(**overrides: Any) -> str:
    """The supervisor's config inside the container: the fake vLLM run by the container's
    python3, fast health checks; `overrides` are dotted keys, e.g. lora__max_lora_rank=8."""
    config: dict[str, Any] = {
        "server": {
            "python": "/usr/bin/python3",
            "port": PORT,
            "host": "127.0.0.1",
            "api_key_env": "NIODOO_API_KEY",
            "env": {
                "PYTHONPATH": f"{SOURCE}/tests/fakevllm",
                "FAKE_VLLM_FAULTS": "load_seconds=1",
            },
        },
        "model": {"path": FAKE_MODEL, "served_name": "tiny"},
        "lora": {
            "enabled": True,
            "max_loras": 2,
            "max_lora_rank": 16,
            "adapters": [{"name": "alpha", "path": "/srv/niodoo/adapters/alpha"}],
        },
        "supervisor": {
            "state_dir": "/var/lib/niodoo-supervisor",
            "startup_timeout": 60,
            "health": {
                "interval": 0.5,
                "startup_interval": 0.1,
                "timeout": 1,
                "failure_threshold": 2,
            },
            "stop": {"grace_period": 5},
            "log": {"path": "/var/log/niodoo-supervisor/vllm.log"},
        },
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump(config)


def write_fake_model(container: Container, folder: str) -> None:
    container.write(
        f"{folder}/config.json",
        '{"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 256}',
    )


def write_adapter(container: Container, folder: str, rank: int, base: str) -> None:
    container.write(
        f"{folder}/adapter_config.json",
        f'{{"peft_type": "LORA", "r": {rank}, "base_model_name_or_path": "{base}"}}',
    )
    container.write(f"{folder}/adapter_model.safetensors", "")


def add_drop_in(container: Container, name: str, text: str) -> None:
    container.write(f"{DROP_IN_DIR}/{name}.conf", text)
    container.run("systemctl", "daemon-reload")
