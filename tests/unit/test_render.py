"""Golden tests: the configs in config/ plan exactly these command lines, and `render`'s
displays show them without their secrets."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from niodoo_supervisor.config.loader import Config, load_config, parse_config
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.install import VllmInstall
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.render import (
    REDACTED,
    format_command,
    plan_json,
    redacted_env,
)

PRODUCTION_ARGV = (
    "/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server "
    "--model /home/beelink/models/Qwen2.5-7B-Instruct-AWQ "
    "--host 0.0.0.0 --port 8000 --quantization awq --dtype auto --gpu-memory-utilization 0.9 "
    "--max-model-len 4096 --tensor-parallel-size 1 --trust-remote-code --enable-lora --max-loras 4 "
    "--max-lora-rank 16 --lora-dtype auto"
)


VLLM_0_32 = VllmInstall("/v/bin/python", Version(0, 32, 0), "0.32.0", "vllm", "/v/lib/vllm")


def _plan(config: Config, environ: dict[str, str] | None = None) -> LaunchPlan:
    return plan_launch(config, VLLM_0_32, environ or {})


def _load(path: Path, environ: dict[str, str]) -> Config:
    config, problems = load_config(path, environ)
    assert config is not None, [p.format() for p in problems]
    return config


def test_production_config_renders_the_documented_command(repo: Path) -> None:
    environ = {"NIODOO_API_KEY": "s3cret"}
    launch = _plan(_load(repo / "config/niodoo.yaml", environ), environ)
    assert launch.argv == tuple(PRODUCTION_ARGV.split())
    assert launch.env["VLLM_API_KEY"] == "s3cret"
    assert "s3cret" not in " ".join(launch.argv)
    assert launch.env["VLLM_LOGGING_CONFIG_PATH"] == "/var/lib/niodoo-supervisor/vllm-logging.json"
    assert launch.env["PYTHONUNBUFFERED"] == "1"


def test_demo_config_renders_adapters_as_lora_modules(repo: Path) -> None:
    config = _load(repo / "config/demo-cpu.yaml", {"NIODOO_VLLM_PYTHON": "/venvs/vllm/bin/python"})
    launch = _plan(config)
    models = repo / "var/demo-model"
    expected = [
        "/venvs/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", f"{models}/base", "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "8000", "--dtype", "bfloat16", "--max-model-len", "256",
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16",
        "--lora-modules", f"alpha={models}/adapters/alpha", f"beta={models}/adapters/beta",
    ]  # fmt: skip
    assert list(launch.argv) == expected
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert launch.env["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_API_KEY" not in launch.env


def _config(text: str, environ: dict[str, str] | None = None) -> Config:
    config, problems = parse_config(text, base_dir=Path("/etc/niodoo"), environ=environ or {})
    assert config is not None, [p.format() for p in problems]
    return config


MINIMAL = "server: {python: /v/bin/python}\nmodel: {path: /models/m}\n"


def test_serve_launcher_puts_the_model_positionally() -> None:
    launch = _plan(_config(MINIMAL))
    assert launch.argv[:3] == ("/v/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    serve = _plan(
        _config("server: {python: /v/bin/python, launcher: serve}\nmodel: {path: /models/m}\n")
    )
    assert serve.argv[:5] == (
        "/v/bin/python",
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        "/models/m",
    )
    assert "--model" not in serve.argv


def test_adapter_with_base_model_name_uses_the_json_form() -> None:
    config = _config(
        MINIMAL
        + "lora:\n  enabled: true\n  adapters:\n    - {name: a, path: ad/a, base_model_name: m}\n"
    )
    argv = _plan(config).argv
    value = argv[argv.index("--lora-modules") + 1]
    assert json.loads(value) == {"name": "a", "path": "/etc/niodoo/ad/a", "base_model_name": "m"}


def test_switches_render_only_when_true_and_extra_args_come_last() -> None:
    config = _config(
        MINIMAL + "engine: {enforce_eager: false, max_num_seqs: 8}\nlora: {enabled: false}\n"
    )
    argv = _plan(config).argv
    assert "--enforce-eager" not in argv and "--enable-lora" not in argv
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    extra = _config(
        MINIMAL.replace("python: /v/bin/python", "python: /v/bin/python, extra_args: [--seed, 7]")
    )
    assert _plan(extra).argv[-2:] == ("--seed", "7")


def test_api_key_is_redacted_from_every_display() -> None:
    environ = {"KEY": "k3y-value"}
    config = _config(
        MINIMAL.replace(
            "python: /v/bin/python",
            "python: /v/bin/python, api_key_env: KEY, extra_args: [--api-key, hunter2]",
        ),
        environ,
    )
    launch = _plan(config, environ)
    shown = format_command(launch) + format_command(launch, one_line=True) + plan_json(launch)
    assert "hunter2" not in shown and "k3y-value" not in shown
    assert shown.count(REDACTED) >= 3
    assert launch.env["VLLM_API_KEY"] == "k3y-value"  # the real value still reaches vLLM


def test_multiline_display_is_one_flag_per_line_and_parses_back() -> None:
    launch = _plan(_config(MINIMAL))
    text = format_command(launch)
    lines = text.split(" \\\n")
    assert lines[0].startswith("/v/bin/python -m vllm.entrypoints.openai.api_server")
    assert all(line.strip().startswith("--") for line in lines[1:])
    assert shlex.split(text.replace("\\\n", " ")) == list(launch.argv)


def test_child_environment_drops_systemd_variables() -> None:
    launch = _plan(_config(MINIMAL))
    env = launch.child_environment(
        {"NOTIFY_SOCKET": "/run/x", "PATH": "/bin", "WATCHDOG_USEC": "1"}
    )
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert env["PATH"] == "/bin"


def test_secret_looking_environment_values_are_redacted_in_displays() -> None:
    config = _config(
        MINIMAL.replace(
            "python: /v/bin/python", "python: /v/bin/python, env: {HF_TOKEN: hf_abc, MODE: x}"
        )
    )
    launch = _plan(config)
    assert redacted_env(launch)["HF_TOKEN"] == REDACTED and redacted_env(launch)["MODE"] == "x"
    assert "hf_abc" not in plan_json(launch)
    assert launch.env["HF_TOKEN"] == "hf_abc"
