"""How much an engine-death log line may do once vLLM serves requests.

A client can forge a whole vLLM line (a request id with a newline, logged by vLLM's request
log), so an engine-death line alone must not restart vLLM: it brings a check forward, and
only vLLM's own answer (/health 503) skips the failure threshold. And once vLLM answers HTTP,
its fatal lines are not believed even if its "server started" line was never logged.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from niodoo_supervisor.logs.pump import LogPump
from niodoo_supervisor.logs.rule_types import Action, Event
from niodoo_supervisor.logs.rules import RuleSet
from supervise_sim import FakeRun, Sim, after_start, boots, event

# --- engine death -----------------------------------------------------------------------------


def _engine_dies(health: int | None, hang: bool = False) -> Callable[[FakeRun], None]:
    def script(run: FakeRun) -> None:
        def die() -> None:
            run.sim.server.health, run.sim.server.hang = health, hang
            run.say("EngineCore encountered a fatal error.",
                    event("engine_fatal_error", Action.CHECK_NOW, "EngineCore encountered a fatal error."))  # fmt: skip

        run.sim.after(12.3, die)

    return script


def test_an_engine_death_confirmed_by_health_503_restarts_at_once(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0, then=_engine_dies(503)), boots(5.0)])
    sim.at(60, sim.signal(signal.SIGTERM))
    sim.play()
    backoff = sim.transition("BACKOFF")
    assert backoff["reason"] == (
        "engine died (EngineCore encountered a fatal error.); /health: HTTP 503"
    )
    # Checked at once, not at the next 10 s interval; one 503 was enough.
    assert sim.runs[0].stopped_at == after_start(5 + 12.3 + 0.005)
    assert "UNHEALTHY" not in sim.states()[:3]


def test_an_engine_death_line_with_a_probe_timeout_waits_for_the_threshold(tmp_path: Path) -> None:
    # The line may be forged by a client; only vLLM's own 503 skips the threshold.
    sim = Sim(tmp_path, scripts=[boots(5.0, then=_engine_dies(None, hang=True)), boots(5.0)])
    sim.at(100, sim.signal(signal.SIGTERM))
    sim.play()
    assert sim.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "BACKOFF"]
    assert sim.transition("BACKOFF")["reason"] == "3 failed checks in a row: /health: timed out"


_RANK = (
    b"(EngineCore_DP0 pid=7) ERROR 11-24 00:56:50 [core.py:1] ValueError: LoRA rank 64 is "
    b"greater than max_lora_rank 16.\n"
    b"(APIServer pid=6) INFO 11-24 00:56:51 [api_server.py:1] the next line ends the record\n"
)


def test_a_fatal_line_after_vllm_answered_http_is_not_acted_on() -> None:
    events: list[Event] = []
    pump = LogPump(-1, ruleset=RuleSet(), on_event=events.append, log_file=None, echo=None)
    before = pump._scanner.feed(_RANK)
    pump.mark_serving()
    after = pump._scanner.feed(_RANK)
    assert [e.action for e in before] == [Action.FATAL]
    assert [e.action for e in after] == [Action.LOG]
    assert after[0].details["not_acted_on"] == "fatal"
