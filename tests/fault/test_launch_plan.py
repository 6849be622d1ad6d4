"""`run` launches exactly what `render` prints: the same argv and environment, read from the
running fake vLLM's own /proc entries."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from harness import REPO, launched_pids, notify_socket, start_supervisor, stop_supervisor, wait_for
from niodoo_supervisor.launch.render import REDACTED

SECRET = "sk-fault-plan-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    adapter = tmp_path / "adapters" / "a"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 12, "base_model_name_or_path": str(model)})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n")
    document = {
        "server": {
            "python": sys.executable,
            "port": _free_port(),
            "api_key_file": str(key_file),
            "env": {"PYTHONPATH": str(REPO / "tests" / "fakevllm"), "EXTRA_FOR_VLLM": "yes"},
        },
        "model": {"path": str(model), "served_name": "tiny"},
        "lora": {
            "enabled": True,
            "max_lora_rank": "auto",
            "adapters": [{"name": "a", "path": str(adapter)}],
        },
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }
    path = tmp_path / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_run_launches_the_argv_and_environment_render_prints(tmp_path: Path) -> None:
    config = _config(tmp_path)
    rendered = subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", "render", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(rendered.stdout)
    assert shown["argv"][shown["argv"].index("--max-lora-rank") + 1] == "16"  # auto, sized
    with notify_socket(tmp_path) as notify:
        run = start_supervisor(config, tmp_path / "state", notify, tmp_path)
        try:
            [pid] = wait_for(lambda: launched_pids(run), 60, "vLLM's launch")
            vllm = psutil.Process(pid)
            assert vllm.cmdline() == shown["argv"]
            environment = vllm.environ()
            for key, value in shown["env"].items():
                assert environment[key] == (SECRET if value == REDACTED else value), key
            assert "NOTIFY_SOCKET" not in environment
            run.signal(signal.SIGTERM)
            assert run.wait_exit(30) == 0
        finally:
            stop_supervisor(run)
