"""`check` and `status` while the real vLLM serves: the port is the supervisor's own vLLM (a
note, exit 0), and `status` starts with the state, what is served and the last trouble."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from harness import NotifySocket, start_supervisor, stop_supervisor
from niodoo_supervisor.demo.model import DemoModel
from realvllm import port_of, write_demo_config

START_TIMEOUT = 300  # a cold CPU start of vLLM is ~30-40 s here; a loaded CI machine is slower


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_check_and_status_while_the_real_vllm_serves(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "check-while-serving"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        run.wait_state("READY", START_TIMEOUT)
        leader = run.status()["vllm_pid"]
        checked = _cli("check", "-c", str(config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        note = re.search(
            rf"note: port {port_of(config)} is served by this supervisor's own vLLM "
            r"\(pid (\d+), running since ",
            checked.stdout,
        )
        assert note is not None, checked.stdout
        assert os.getsid(int(note.group(1))) == leader  # vLLM's leader or one of its session

        shown = _cli("status", "-c", str(config))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("state:     READY since "), shown.stdout
        assert lines[1].startswith("serving:   tiny + adapters "), shown.stdout
        assert lines[2].startswith("trouble:   "), shown.stdout
        assert f"vLLM:      pid {leader}; version 0.32.0; 1 start(s), 0 restart(s)" in lines
        assert "None" not in shown.stdout
    finally:
        stop_supervisor(run)
        notify.close()
