"""Stopping vLLM the way it drains: the supervisor SIGTERMs the fake's API server alone, so a
request in flight finishes while the fake's EngineCore stays up, and vLLM's shutdown lines are
not reported as a crash."""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass, field

import httpx
import yaml

from fault_supervisor import Launcher, assert_nothing_left
from harness import SupervisorRun

# The fake's canned completion streams 13 chunks; at 0.15 s each it is in flight ~2 s.
_STREAM = "load_seconds=0.2,stream_chunk_seconds=0.15"


@dataclass
class _Stream:
    """One streamed completion as a client saw it."""

    first_chunk: threading.Event = field(default_factory=threading.Event)
    chunks: int = 0
    finish_reason: str | None = None
    error: str | None = None

    def read(self, port: int) -> None:
        body = {"model": "tiny", "prompt": "hello", "stream": True}
        url = f"http://127.0.0.1:{port}/v1/completions"
        try:
            with httpx.stream("POST", url, json=body, timeout=30) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    self.chunks += 1
                    self.first_chunk.set()
                    self.finish_reason = json.loads(line[6:])["choices"][0]["finish_reason"]
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.first_chunk.set()  # never leave the test waiting


def _stop_during_a_stream(run: SupervisorRun) -> _Stream:
    run.wait_state("READY", 20)
    port = yaml.safe_load(run.config.read_text())["server"]["port"]
    stream = _Stream()
    reader = threading.Thread(target=stream.read, args=(port,), daemon=True)
    reader.start()
    assert stream.first_chunk.wait(10) and stream.error is None, stream.error
    run.signal(signal.SIGTERM)
    reader.join(30)
    assert not reader.is_alive()
    assert run.wait_exit(60) == 0
    return stream


def test_a_request_in_flight_during_a_stop_completes(supervise: Launcher) -> None:
    run = supervise(_STREAM, server__shutdown_timeout=5)
    stream = _stop_during_a_stream(run)
    # Cut at the next chunk when the EngineCore got SIGTERM together with its API server.
    assert (stream.error, stream.finish_reason) == (None, "stop")
    assert stream.chunks == 13  # every word of the canned reply, then the finish chunk
    assert run.event("vllm_killed") is None  # vLLM ended itself within the grace
    assert_nothing_left(run)


def test_a_requested_stop_logs_no_critical_vllm_event(supervise: Launcher) -> None:
    run = supervise(_STREAM, server__shutdown_timeout=5)
    _stop_during_a_stream(run)
    events = [record for record in run.events() if record.get("event") == "vllm_event"]
    assert not [record for record in events if record.get("severity") in ("critical", "error")]
    # vLLM's EngineDeadError line of a clean SIGTERM: counted, shown as the stop's.
    engine_dead = [record for record in events if record.get("rule") == "engine_dead"]
    assert engine_dead and all(record.get("stop_requested") == "true" for record in engine_dead)
    assert all(record.get("rule_severity") == "critical" for record in engine_dead)
    assert_nothing_left(run)
