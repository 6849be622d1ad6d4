"""Helpers of the real-vLLM tier: demo configs, vLLM's readiness seen from outside, and the
figures printed at the end of a run."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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


@dataclass(frozen=True)
class Poll:
    started: float  # time.monotonic() when the poll began
    answered: float  # ... and when its last answer came back
    ok: bool


class ReadinessPoller:
    """Polls vLLM from outside the supervisor, in a thread, every `interval` seconds:
    ready is what the supervisor calls ready, `/health` 200 and `/v1/models` listing every
    name in `names`. The time it first sees a start ready is the start of that start's
    ready-lag (see `ready_lags`)."""

    def __init__(self, base_url: str, names: Sequence[str], interval: float = 0.015) -> None:
        self.base_url = base_url
        self.names = frozenset(names)
        self.interval = interval
        self._polls: list[Poll] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def polls(self) -> list[Poll]:
        with self._lock:
            return list(self._polls)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=2, trust_env=False) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                ok = self._ready(client)
                with self._lock:
                    self._polls.append(Poll(started, time.monotonic(), ok))
                self._stop.wait(self.interval)

    def _ready(self, client: httpx.Client) -> bool:
        try:
            if client.get("/health").status_code != 200:
                return False
            data = client.get("/v1/models").json().get("data", [])
            return {item["id"] for item in data} >= self.names
        except (httpx.HTTPError, ValueError, AttributeError, KeyError, TypeError):
            return False


def ready_lags(polls: Sequence[Poll], readies: Sequence[float]) -> list[float | None]:
    """For each READY=1 (its receipt time), how long after vLLM was first seen ready from
    outside it came: from the answer of the first ready poll after the last failed poll that
    began before READY=1. None when no such poll exists (the poller never saw that start)."""
    lags: list[float | None] = []
    for ready in readies:
        failed = [poll.started for poll in polls if not poll.ok and poll.started < ready]
        if not failed:
            lags.append(None)
            continue
        seen = [poll.answered for poll in polls if poll.ok and poll.started > failed[-1]]
        lags.append(ready - seen[0] if seen else None)
    return lags


def record_ready_lags(polls: Sequence[Poll], readies: Sequence[float]) -> None:
    """One figure per start, then the worst; no assertion (the figure depends on load)."""
    lags = ready_lags(polls, readies)
    for number, lag in enumerate(lags, 1):
        shown = "not seen by the poller" if lag is None else f"{lag:.3f}s"
        record_figure(
            f"ready-lag, start {number} (vLLM lists every adapter, seen from outside -> "
            f"READY=1, the effect probe's round between): {shown}"
        )
    measured = [lag for lag in lags if lag is not None]
    if measured:
        record_figure(f"ready-lag, worst of {len(measured)} start(s): {max(measured):.3f}s")
