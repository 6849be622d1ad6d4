"""What a person sees: the supervisor on the demo config with the real vLLM, its stdout and
stderr on one file as on a terminal, `PYTHONUNBUFFERED=1` as in many containers. Up to the
ready line the console holds fewer than 40 lines, all the supervisor's (vLLM's detail is in
its log file), whole lines only; the ready line names the model, the adapters and the port; a
client's `lora_name` shows as one warning; a Ctrl-C stop shows no warning."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from harness import NotifySocket, wait_for
from niodoo_supervisor.demo.model import DemoModel
from niodoo_supervisor.supervise import run_record
from realvllm import port_of, record_figure, write_demo_config

# `HH:MM:SS level event ...`, the console rendering of a supervisor record.
_RECORD = re.compile(r"^\d\d:\d\d:\d\d (debug|info|warning|error|critical) +(\w+)")
_READY_TIMEOUT = 600.0  # a loaded 2-core machine took over 300 s to start the tiny model
_CONSOLE_LIMIT = 40  # the bound on the lines a person reads before "ready"


def _console(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def _lines_to_ready(lines: list[str]) -> int:
    """How many lines the console holds up to its ready line (0: not ready yet)."""
    for index, line in enumerate(lines):
        match = _RECORD.match(line)
        if match and match.group(2) == "ready":
            return index + 1
    return 0


def _end(process: subprocess.Popen[bytes], state_dir: Path) -> None:
    """Test cleanup whatever happened: the supervisor, then any vLLM session it recorded (the
    console rendering carries no pid for the harness to read)."""
    record = run_record.read(state_dir)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if record is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.leader.pid, signal.SIGKILL)


def test_demo_console_to_ready_lora_name_and_stop(
    vllm_python: str, demo_model: DemoModel, e2e_tmp: Path
) -> None:
    tmp = e2e_tmp / "console"
    tmp.mkdir()
    config_path = write_demo_config(tmp, vllm_python, demo_model)
    config = yaml.safe_load(config_path.read_text())
    config["supervisor"]["log"] = {"format": "console"}  # what a terminal gets by default
    config_path.write_text(yaml.safe_dump(config))
    port = port_of(config_path)
    console = tmp / "console.txt"
    notify = NotifySocket(tmp / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
    env.pop("NO_COLOR", None)
    with console.open("wb") as terminal:
        process = subprocess.Popen(
            [sys.executable, "-m", "niodoo_supervisor", "run", "-c", str(config_path)],
            stdout=terminal,
            stderr=terminal,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        count = wait_for(
            lambda: _lines_to_ready(_console(console)), _READY_TIMEOUT, "the console's ready line"
        )
        to_ready = _console(console)[:count]
        print("\n--- console to ready ---\n" + "\n".join(to_ready))
        record_figure(f"console: {len(to_ready)} lines to the ready line (limit {_CONSOLE_LIMIT})")
        assert len(to_ready) < _CONSOLE_LIMIT, "\n".join(to_ready)
        # Whole records only: no vLLM line on the console, none glued to a record.
        strays = [line for line in to_ready if not _RECORD.match(line)]
        assert strays == [], strays
        ready = to_ready[-1]
        for name in ("tiny", "alpha", "beta", str(port)):
            assert name in ready, ready
        progress = [line for line in to_ready if _RECORD.match(line).group(2) == "progress"]  # type: ignore[union-attr]
        assert any(re.search(r"KV cache.*\d", line) for line in progress), progress
        # The detail is in vLLM's log file, verbatim.
        vllm_log = (tmp / "state" / "vllm.log").read_text(errors="replace")
        assert "Application startup complete." in vllm_log

        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "tiny",
                "lora_name": "alpha",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        mistake = wait_for(
            lambda: [
                line for line in _console(console) if "lora_name" in line and " warning " in line
            ],
            60,
            "the lora_name warning on the console",
        )
        assert len(mistake) == 1, mistake
        stop_from = len(_console(console))
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=120) == 0
        stop = _console(console)[stop_from:]
        print("\n--- console of the stop ---\n" + "\n".join(stop))
        assert stop, "the stop printed nothing"
        loud = [line for line in stop if not re.match(r"^\d\d:\d\d:\d\d (debug|info) ", line)]
        assert loud == [], loud
    finally:
        _end(process, tmp / "state")
        notify.close()
