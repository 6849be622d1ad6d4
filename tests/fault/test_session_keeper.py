"""The session keeper (`supervise/session_keeper.py`) run as the supervisor runs it, a file of
its own, with stand-ins for vLLM and the Ray node: a planned stop ends as vLLM ends, also when
the supervisor's group signal (after the grace period) ends the Ray node before vLLM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import wait_for
from niodoo_supervisor.supervise import session_keeper

# vLLM draining: each SIGTERM is a line in `terms`; it ends (code 0) once it got one and the
# test has created `release`.
VLLM = """
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
def on_term(*_):
    with (here / "terms").open("a") as out:
        out.write("SIGTERM\\n")
signal.signal(signal.SIGTERM, on_term)
(here / "vllm-up").touch()
while not ((here / "terms").exists() and (here / "release").exists()):
    time.sleep(0.02)
"""
# The Ray node of `ray start --block`: ends (code 0) at SIGTERM.
RAY = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
(pathlib.Path(sys.argv[1]) / "ray-up").touch()
while True:
    time.sleep(0.02)
"""


def keeper(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The keeper of vLLM and the Ray node, leading its own session; and its output file."""
    spec: dict[str, object] = {
        "name": "ray",
        "companion": [sys.executable, "-c", RAY, str(tmp)],
        "companion_env": {},
        "wait_for": None,
        "vllm": [sys.executable, "-c", VLLM, str(tmp)],
    }
    output = tmp / "keeper.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, session_keeper.__file__, json.dumps(spec)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    wait_for(lambda: (tmp / "vllm-up").exists() and (tmp / "ray-up").exists(), 30, "both up")
    return process, output


@pytest.mark.parametrize("leader_first", [True, False], ids=["leader-then-group", "group"])
def test_the_ray_node_ended_by_the_stops_group_signal_waits_for_vllm(
    tmp_path: Path, leader_first: bool
) -> None:
    process, output = keeper(tmp_path)
    try:
        if leader_first:  # the supervisor's stop: SIGTERM to the leader, vLLM drains
            process.send_signal(signal.SIGTERM)
            wait_for((tmp_path / "terms").exists, 30, "vLLM's SIGTERM")
        os.killpg(process.pid, signal.SIGTERM)  # the grace period over: the whole group
        wait_for(lambda: "ray exited" in output.read_text(), 30, "the Ray node's end")
        (tmp_path / "release").touch()  # vLLM done draining
        assert process.wait(30) == 0  # vLLM's code, not COMPANION_EXITED
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    said = output.read_text()
    assert "ray exited (0) during the stop; waiting for vLLM" in said
    assert "stopping vLLM" not in said
    # The supervisor's two signals at most: the keeper passes on only the first.
    terms = (tmp_path / "terms").read_text().splitlines()
    assert 1 <= len(terms) <= 2, terms


def test_a_ray_node_ending_unasked_stops_vllm_and_says_so(tmp_path: Path) -> None:
    process, output = keeper(tmp_path)
    try:
        ray = wait_for(lambda: _ray_pid(output), 30, "the Ray node's pid")
        assert ray is not None
        os.kill(ray, signal.SIGTERM)  # not a stop of the keeper's: the Ray node died
        wait_for((tmp_path / "terms").exists, 30, "vLLM stopped by the keeper")
        (tmp_path / "release").touch()
        assert process.wait(30) == session_keeper.COMPANION_EXITED
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "ray exited (0); stopping vLLM" in output.read_text()


def _ray_pid(output: Path) -> int | None:
    for line in output.read_text().splitlines():
        if line.startswith("niodoo session keeper: started ray (pid "):
            return int(line.rsplit(" ", 1)[1].rstrip(")"))
    return None
