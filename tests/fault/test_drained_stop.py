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

from fault_supervisor import Launcher, assert_nothing_left, free_port, stop
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


def _get_ready(listen: int) -> int | str:
    try:
        return httpx.get(f"http://127.0.0.1:{listen}/ready", timeout=2, trust_env=False).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def test_a_drain_reports_vllm_requests_going_to_zero_and_says_not_ready_first(
    supervise: Launcher,
) -> None:
    listen = free_port()
    run = supervise(
        f"{_STREAM},drain_teardown_seconds=1.5",
        drain__timeout=5,
        drain__announce=0.5,
        drain__readiness_listen=f"127.0.0.1:{listen}",
    )
    run.wait_state("READY", 20)
    assert _get_ready(listen) == 200
    shown: list[dict[str, object]] = []
    ready_answers: list[int | str] = []

    def watch() -> None:
        while run.process.poll() is None:
            drain = run.status().get("drain")
            if drain and (not shown or shown[-1] != drain):
                shown.append(drain)
                ready_answers.append(_get_ready(listen))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stream = _stop_during_a_stream(run)
    watcher.join(10)
    assert (stream.error, stream.finish_reason) == (None, "stop")
    phases = [(d["phase"], d["running"]) for d in shown]
    # Announced first (nothing read yet), then draining with the request running, then none.
    assert phases[0] == ("announce", None)
    assert ("draining", 1) in phases and phases[-1] == ("draining", 0), phases
    assert set(ready_answers) == {503}
    assert run.status()["drain"] is None
    started, finished = run.event("drain_started"), run.event("drain_finished")
    assert started is not None and started["running"] == "1"
    assert finished is not None and finished["running_at_end"] == "0"
    assert run.event("vllm_killed") is None
    assert_nothing_left(run)


def test_readiness_listen_serves_only_get_ready(supervise: Launcher) -> None:
    listen = free_port()
    run = supervise(drain__readiness_listen=f"127.0.0.1:{listen}")
    run.wait_state("READY", 20)
    base = f"http://127.0.0.1:{listen}"
    assert httpx.get(f"{base}/ready", trust_env=False).text == "ready\n"
    assert httpx.get(f"{base}/metrics", trust_env=False).status_code == 404
    assert httpx.post(f"{base}/ready", trust_env=False).status_code == 405
    assert stop(run) == 0
