"""How much an engine-death log line may do once vLLM serves requests.

A client can forge a whole vLLM line (a request id with a newline, logged by vLLM's request
log), so an engine-death line alone must not restart vLLM: it brings a check forward, and
only vLLM's own answer (/health 503) skips the failure threshold. And once vLLM answers HTTP,
its fatal lines are not believed even if its "server started" line was never logged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness import REPO
from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.launch.plan import plan_launch
from niodoo_supervisor.logs.pump import LogPump
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.logs.rules import RuleSet
from niodoo_supervisor.supervise.loop import Supervisor
from niodoo_supervisor.supervise.probes import CheckResult, ProbeResult
from niodoo_supervisor.supervise.states import State


class _Notifier:
    dropped = 0

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> None:
        self.sent.append(fields)


def _config(tmp_path: Path) -> Config:
    shutil.copy(REPO / "config" / "demo-cpu.yaml", tmp_path / "demo.yaml")
    text = (tmp_path / "demo.yaml").read_text().replace("../var/state", str(tmp_path / "state"))
    (tmp_path / "demo.yaml").write_text(text)
    config, problems = load_config(tmp_path / "demo.yaml", {"NIODOO_VLLM_PYTHON": "python3"})
    assert config is not None, problems
    return config


def _ready_supervisor(tmp_path: Path) -> Supervisor:
    config = _config(tmp_path)
    supervisor = Supervisor(
        config,
        plan_launch(config, None, {}),
        api_key=None,
        notifier=_Notifier(),
        environ={},
    )
    supervisor.state = State.READY
    return supervisor


_DEATH = Event(
    "engine_fatal_error", Severity.CRITICAL, Action.CHECK_NOW, "", "EngineCore encountered a "
    "fatal error.", "EngineCore_DP0", 7, None, ("EngineCore encountered a fatal error.",),
)  # fmt: skip


def _failed(status: int | None, reason: str) -> CheckResult:
    return CheckResult(ProbeResult(False, status, 5.0, reason), None)


def test_an_engine_death_line_with_a_health_timeout_waits_for_the_threshold(
    tmp_path: Path,
) -> None:
    supervisor = _ready_supervisor(tmp_path)
    outcome = supervisor._liveness_check(_failed(None, "timed out"), 1, _DEATH)
    assert outcome is None
    assert supervisor.state is State.UNHEALTHY


def test_an_engine_death_line_confirmed_by_health_503_restarts_at_once(tmp_path: Path) -> None:
    supervisor = _ready_supervisor(tmp_path)
    outcome = supervisor._liveness_check(_failed(503, "HTTP 503"), 1, _DEATH)
    assert outcome is not None
    assert outcome.kind == "failed"
    assert outcome.rule == "engine_fatal_error"


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
