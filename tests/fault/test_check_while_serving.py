"""`check` on the config of a supervisor that serves: its own vLLM holds the port, which is
no problem (a note naming it); a port held by anything else still is."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from fault_supervisor import Launcher, stop
from harness import launched_pids


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_while_serving_names_our_own_vllm_and_passes(
    supervise: Launcher, tmp_path: Path
) -> None:
    run = supervise()
    run.wait_state("READY", 20)
    port = yaml.safe_load(run.config.read_text())["server"]["port"]
    checked = _check(run.config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    note = re.search(
        rf"note: port {port} is served by this supervisor's own vLLM \(pid (\d+), running since ",
        checked.stdout,
    )
    assert note is not None, checked.stdout
    # The listener is vLLM's leader or a process of its session (the fake's API server).
    assert os.getsid(int(note.group(1))) in launched_pids(run)

    # The same state folder, but the port held by a stranger: still an error.
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        document = yaml.safe_load(run.config.read_text())
        document["server"]["port"] = stranger.getsockname()[1]
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump(document))
        checked = _check(other)
    assert checked.returncode == 78, checked.stdout
    assert "error: server.port: port " in checked.stdout and "own vLLM" not in checked.stdout
    assert stop(run) == 0
