"""The generated logging config keeps everything vLLM logs by default: the real vLLM is started
twice with the supervisor's argv (once bare, once with the generated ``VLLM_LOGGING_CONFIG_PATH``),
both get the same requests (one sending ``lora_name``, one for an unknown model), and every line
the bare vLLM printed (numbers normalised) appears with the config; the config adds only the
ignored-fields DEBUG line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.demo.model import DemoModel
from niodoo_supervisor.launch.install import inspect_vllm
from niodoo_supervisor.launch.plan import plan_launch
from realvllm import port_of, record_figure, write_demo_config

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_HEX = re.compile(r"(?<![0-9a-f])[0-9a-f]{8,}(?![0-9a-f])")  # addresses, ids, temp names
_NUMBER = re.compile(r"\d+")  # pids, times, ports, client ports, addresses, durations
# Written on a timer (every 10 s while requests run): one run may print one more or fewer.
_TIMED = ("Avg prompt throughput",)
_IGNORED = "The following fields were present in the request but ignored: {'lora_name'}"
_READY_TIMEOUT = 600.0  # a loaded 2-core machine took over 300 s to start the tiny model


def normalised(line: str) -> str:
    return _NUMBER.sub("N", _HEX.sub("X", _ANSI.sub("", line))).rstrip()


def _timed(line: str) -> bool:
    return any(text in line for text in _TIMED)


def _wait_for(what: str, test: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _serve_and_ask(
    argv: list[str], env: dict[str, str], port: int, out: Path
) -> tuple[list[str], list[str]]:
    """Start vLLM, send the two requests once it serves, stop it: what it printed before it
    was told to stop, and after (a race of processes ending; Python lists leaked objects
    in no fixed order)."""
    base = f"http://127.0.0.1:{port}"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def serving() -> bool:
            assert proc.poll() is None, out.read_text(errors="replace")[-3000:]
            try:
                return httpx.get(f"{base}/v1/models", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("vLLM to serve", serving, _READY_TIMEOUT)
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
        sent = httpx.post(
            f"{base}/v1/chat/completions",
            json={**ask, "model": "tiny", "lora_name": "alpha"},
            timeout=60,
        )
        assert sent.status_code == 200, sent.text
        unknown = httpx.post(
            f"{base}/v1/chat/completions", json={**ask, "model": "nope"}, timeout=60
        )
        assert unknown.status_code == 404, unknown.text
        _wait_for(
            "the 404's access line",
            lambda: '/v1/chat/completions HTTP/1.1" 404' in out.read_text(errors="replace"),
            30,
        )
    finally:
        serving_bytes = out.stat().st_size
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    text = out.read_bytes()
    return _lines(text[:serving_bytes]), _lines(text[serving_bytes:])


def _lines(text: bytes) -> list[str]:
    return text.decode(errors="replace").replace("\r", "").split("\n")


def test_generated_config_keeps_all_vllm_logs_by_default(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "default-logging"
    tmp.mkdir()
    config_path = write_demo_config(tmp, vllm_python, demo_model)
    config, problems = load_config(config_path, os.environ)
    assert config is not None, problems
    plan = plan_launch(config, inspect_vllm(vllm_python, os.environ), os.environ)
    assert plan.logging_config is not None
    logging_file = tmp / "logging.json"
    logging_file.write_text(json.dumps(plan.logging_config))
    # The same hash seed for both: vLLM prints sets (a route's methods) in hash order.
    env = {**plan.child_environment(os.environ), "PYTHONHASHSEED": "0"}
    bare_env = {k: v for k, v in env.items() if k != "VLLM_LOGGING_CONFIG_PATH"}
    ours_env = {**env, "VLLM_LOGGING_CONFIG_PATH": str(logging_file)}
    port = port_of(config_path)

    bare, bare_stop = _serve_and_ask(list(plan.argv), bare_env, port, tmp / "bare.log")
    ours, ours_stop = _serve_and_ask(list(plan.argv), ours_env, port, tmp / "ours.log")

    alone, with_ours = compare(bare, bare_stop, ours, ours_stop)
    record_figure(
        f"vLLM 0.32 default logging, while serving: {alone} lines alone, {with_ours} with the "
        "generated config"
    )


def compare(
    bare: list[str], bare_stop: list[str], ours: list[str], ours_stop: list[str]
) -> tuple[int, int]:
    """Assert that the generated config kept every line of the bare vLLM and added only the
    ignored-fields line; the numbers of lines printed while serving, alone and with it."""
    bare_lines = Counter(normalised(line) for line in bare if line.strip())
    ours_lines = Counter(normalised(line) for line in ours if line.strip())
    # The lines a new operator missed: start-up, "startup complete", the access log.
    for expected in (
        "INFO:     Started server process [1]",
        "INFO:     Application startup complete.",
        'INFO:     127.0.0.1:1 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        'INFO:     127.0.0.1:1 - "POST /v1/chat/completions HTTP/1.1" 404 Not Found',
    ):
        assert normalised(expected) in bare_lines, expected
    for stop_line in (
        "INFO:     Shutting down",
        "INFO:     Waiting for application shutdown.",
        "INFO:     Application shutdown complete.",
    ):
        assert stop_line in bare_stop and stop_line in ours_stop, stop_line
    missing = [line for line in bare_lines if line not in ours_lines and not _timed(line)]
    assert missing == []
    added = [line for line in ours_lines if line not in bare_lines and not _timed(line)]
    assert len(added) == 1 and added[0].endswith(_IGNORED) and " DEBUG " in added[0], added
    return sum(bare_lines.values()), sum(ours_lines.values())
