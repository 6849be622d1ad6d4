"""The daemon's control socket with the real supervisor on the fake vLLM: it exists (0660)
before vLLM's first launch, `status` and `reload` go through it, a refused reload exits 78
and is shown by `status` while the old config keeps serving, and the socket file is gone
once the supervisor has exited."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from fault_supervisor import Launcher, stop
from harness import SupervisorRun, wait_for
from niodoo_supervisor import exitcodes


def _cli(run: SupervisorRun, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", *argv, "-c", str(run.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_and_reload_go_through_the_socket(supervise: Launcher, tmp_path: Path) -> None:
    socket_path = tmp_path / "state" / "control.sock"
    run = supervise("load_seconds=0.5")
    wait_for(socket_path.exists, 20, "the control socket")
    assert stat.S_IMODE(socket_path.lstat().st_mode) == 0o660
    run.wait_state("READY", 20)

    shown = _cli(run, "status", "--json")
    assert shown.returncode == exitcodes.OK, shown.stderr
    assert json.loads(shown.stdout)["source"] == "daemon"

    good = run.config.read_text()
    run.config.write_text(good.replace("max_lora_rank: 16", "max_lora_rank: 24"))
    refused = _cli(run, "reload")
    assert refused.returncode == exitcodes.CONFIG, refused.stderr
    assert refused.stderr.startswith("refused, the running config stays: ")
    assert "lora.max_lora_rank: 24 is not accepted" in refused.stderr
    human = _cli(run, "status")
    assert "serving the previous config; the new one was refused: " in human.stdout
    assert "lora.max_lora_rank: 24 is not accepted" in human.stdout
    assert run.states() == ["STARTING", "READY"]

    run.config.write_text(good)
    taken = _cli(run, "reload")
    assert (taken.returncode, taken.stdout) == (
        exitcodes.OK,
        "taken: the config is unchanged, nothing to do\n",
    )
    assert stop(run) == 0
    assert not socket_path.exists()
    fallback = _cli(run, "status")
    assert fallback.stdout.startswith("note:      daemon not answering (no control socket at ")
