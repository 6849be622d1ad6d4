"""`lora.verify` in the loop: the effect probe at readiness (warn: reported and ready; strict:
FATAL, exit 78, no restart; a failed adapter request: still STARTING, asked again) and after a
live load (strict: undone and refused). Scripted histories in virtual time; vLLM's
/v1/completions is an httpx.MockTransport."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from adapter_routes import FakeVllm, adapter_api, adapter_folder
from niodoo_supervisor import exitcodes
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    ReloadAsked,
    ReloadResult,
)
from supervise_sim import START, Sim, after_start, boots, sim_config, sim_plan

BASE = {"Hello": -0.5, "Hi": -1.25, "The": -2.0, "A": -3.5, "We": -4.0}


def completion(top: dict[str, float]) -> httpx.Response:
    logprobs = {"text_offset": [0], "token_logprobs": [-0.5], "tokens": ["Hello"],
                "top_logprobs": [top]}  # fmt: skip
    choice = {"index": 0, "text": "Hello", "logprobs": logprobs, "finish_reason": "length"}
    return httpx.Response(200, json={"object": "text_completion", "choices": [choice]})


class EffectVllm(FakeVllm):
    """vLLM's adapter routes and /v1/completions: the base model answers BASE, an adapter a
    shifted copy unless it is in `no_effect`; `answers[model]` (a list, the last repeats)
    answers instead; `delay` holds every completion."""

    def __init__(self, loaded: dict[str, str]) -> None:
        super().__init__(loaded=loaded)
        self.no_effect: set[str] = set()
        self.answers: dict[str, list[Callable[[], httpx.Response]]] = {}
        self.asked: list[str] = []
        self.read_timeouts: list[float] = []  # each completion's, as the client set it
        self.delay = 0.0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/completions":
            return self(request)
        model = json.loads(request.content)["model"]
        self.asked.append(model)
        self.read_timeouts.append(request.extensions["timeout"]["read"])
        await asyncio.sleep(self.delay)
        scripted = self.answers.get(model)
        if scripted:
            return (scripted.pop(0) if len(scripted) > 1 else scripted[0])()
        if model == self.served or model in self.no_effect:
            return completion(BASE)
        return completion({token: value - 2.0 for token, value in BASE.items()})


def effect_sim(
    tmp_path: Path,
    verify: str,
    *scripts: Any,
    supervisor: dict[str, Any] | None = None,
    **lora: Any,
) -> tuple[Sim, EffectVllm]:
    a, b = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "b")
    config = sim_config(tmp_path, lora={"verify": verify, **lora}, **(supervisor or {}))
    sim = Sim(tmp_path, scripts=list(scripts), config=config)
    vllm = EffectVllm(loaded={"a": a, "b": b})
    sim.supervisor.adapter_api_for = lambda config, api_key: adapter_api(vllm.handle)  # type: ignore[arg-type]
    return sim, vllm


def status_of(sim: Sim) -> dict[str, Any]:
    state_dir = sim.config.state_dir if sim.config else None
    assert state_dir is not None
    data: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    return data


def no_effect_metric(sim: Sim, adapter: str) -> float:
    """niodoo_supervisor_adapter_no_effect_total{adapter} (0 when never counted)."""
    [family] = sim.supervisor.metrics.adapter_no_effects.collect()
    values = [
        sample.value
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels == {"adapter": adapter}
    ]
    return values[0] if values else 0.0


def test_warn_reports_a_no_op_adapter_with_its_evidence_and_is_ready(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))
    vllm.no_effect = {"b"}
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    assert vllm.asked == ["tiny", "a", "b"]  # once, at readiness: the base once for both
    event = sim.event("adapter_no_effect")
    assert event is not None and event["adapter"] == "b"
    assert event["base_top"] == event["adapter_top"] == BASE and event["largest_delta"] == 0.0
    effects = status_of(sim)["adapter_effects"]
    assert effects["a"]["verdict"] == "effect" and effects["a"]["largest_delta"] == 2.0
    assert effects["b"]["verdict"] == "no_effect" and "base model" in effects["b"]["reason"]
    counted = status_of(sim)["events"]["rules"]["adapter_no_effect"]
    assert counted["count"] == 1 and "'b'" in counted["last_line"]
    assert no_effect_metric(sim, "b") == 1.0 and no_effect_metric(sim, "a") == 0.0


def test_strict_makes_a_no_op_adapter_fatal_without_a_restart(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "strict", boots(5.0), boots(5.0))
    vllm.no_effect = {"b"}
    assert sim.play() == exitcodes.CONFIG  # 78: systemd's RestartPreventExitStatus
    assert sim.states() == ["STARTING", "FATAL"]
    assert len(sim.runs) == 1 and sim.runs[0].stopped_at is not None  # no model load wasted
    assert (
        "adapter(s) 'b' have no effect (lora.verify: strict)" in sim.transition("FATAL")["reason"]
    )
    assert not sim.notifier.times("READY=1")
    assert sim.event("adapter_no_effect") is not None


def test_a_failed_adapter_request_keeps_starting_until_it_answers(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))
    vllm.answers["a"] = [lambda: httpx.Response(500, json={"error": {"message": "boom"}})] * 3
    vllm.answers["a"].append(lambda: completion({t: v - 1 for t, v in BASE.items()}))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    assert vllm.asked.count("a") == 4  # three failed checks, then ready
    failed = [r for r in sim.logs if r["event"] == "adapter_effect_probe_failed"]
    assert len(failed) == 3 and failed[0]["reason"] == "HTTP 500: boom"
    assert sim.event("adapter_no_effect") is None


def test_an_adapter_that_never_answers_ends_at_the_startup_timeout(tmp_path: Path) -> None:
    config_timeout = 20
    sim, vllm = effect_sim(
        tmp_path, "strict", boots(5.0), supervisor={"startup_timeout": config_timeout}
    )
    vllm.answers["a"] = [lambda: httpx.Response(404, json={"error": {"message": "gone"}})]
    sim.at(config_timeout + 3, sim.signal(signal.SIGTERM))
    sim.play()
    backoff = sim.transition("BACKOFF")
    assert "adapter 'a': HTTP 404: gone" in backoff["reason"]
    assert "startup_timeout" in backoff["reason"]


def test_off_asks_nothing(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "off", boots(5.0))
    vllm.no_effect = {"a", "b"}
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert vllm.asked == [] and sim.states()[:2] == ["STARTING", "READY"]


def test_a_stop_does_not_wait_for_a_slow_effect_probe(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))
    vllm.delay = 50.0  # the probe's own timeout is 60 s
    sim.at(10, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "STOPPING", "STOPPED"]
    assert sim.transition("STOPPING")["reason"]
    assert sim.runs[0].stopped_at == after_start(10)


# --- after a live load ------------------------------------------------------------------------


def _load(sim: Sim, at: float, name: str, path: str) -> list[asyncio.Future[CommandResult]]:
    replies: list[asyncio.Future[CommandResult]] = []

    def post() -> None:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        replies.append(reply)
        sim.supervisor.dispatcher.post(AdapterLoadAsked(name, path, reply))

    sim.at(at, post)
    return replies


def test_strict_undoes_a_live_load_without_effect_and_says_why(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "strict", boots(5.0), runtime_updates=True)
    c = adapter_folder(tmp_path / "c")
    vllm.no_effect = {"c"}
    replies = _load(sim, 20, "c", c)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [reply] = replies
    result = reply.result()
    assert not result.ok
    assert "load of adapter 'c' failed: no effect (lora.verify: strict)" in result.message
    assert "base model top {'Hello': -0.5" in result.message
    assert "c" not in vllm.loaded and ("unload", "c") in vllm.calls
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]  # vLLM serves on
    # c is not served: its verdict went with it (the event and the answer keep the evidence)
    assert "c" not in status_of(sim)["adapter_effects"]
    assert sim.event("adapter_no_effect") is not None


def test_warn_keeps_a_live_load_without_effect_and_reports_it(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0), runtime_updates=True)
    c = adapter_folder(tmp_path / "c")
    vllm.no_effect = {"c"}
    replies = _load(sim, 20, "c", c)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert replies[0].result().ok and "c" in vllm.loaded
    event = sim.event("adapter_no_effect")
    assert event is not None and event["adapter"] == "c"
    assert no_effect_metric(sim, "(other)") == 1.0  # not in lora.adapters: no label of its own


def test_a_live_load_whose_request_fails_is_undone(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0), runtime_updates=True)
    c = adapter_folder(tmp_path / "c")
    vllm.answers["c"] = [lambda: httpx.Response(500, text="Internal Server Error")]
    replies = _load(sim, 20, "c", c)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    result = replies[0].result()
    assert (
        not result.ok
        and "load of adapter 'c' failed: HTTP 500: Internal Server Error" in result.message
    )
    assert "c" not in vllm.loaded


def test_sim_config_default_keeps_verify_off(tmp_path: Path) -> None:
    # Every other history runs without the probe: their scripted vLLM has no /v1/completions.
    assert sim_config(tmp_path).lora.verify == "off"


# --- each run's own verdicts --------------------------------------------------------------------


def _crashes_at(seconds: float) -> Any:
    return boots(5.0, then=lambda run: run.sim.after(seconds, lambda: run.exit(1)))


def test_a_restarted_vllm_reports_its_no_op_adapter_again(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", _crashes_at(10), boots(5.0))
    vllm.no_effect = {"b"}
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states().count("READY") == 2 and len(sim.runs) == 2
    reported = [r for r in sim.logs if r["event"] == "adapter_no_effect"]
    assert [r["adapter"] for r in reported] == ["b", "b"]  # once per start of vLLM
    assert status_of(sim)["events"]["rules"]["adapter_no_effect"]["count"] == 2
    assert no_effect_metric(sim, "b") == 2.0


def test_a_retried_readiness_check_reports_a_no_op_adapter_once(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))
    vllm.no_effect = {"b"}
    vllm.answers["a"] = [lambda: httpx.Response(500, json={"error": {"message": "boom"}})] * 2
    vllm.answers["a"].append(lambda: completion({t: v - 1 for t, v in BASE.items()}))
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert vllm.asked.count("b") == 3  # three rounds: two failed checks, then ready
    assert [r["adapter"] for r in sim.logs if r["event"] == "adapter_no_effect"] == ["b"]


def _unload(sim: Sim, at: float, name: str) -> list[asyncio.Future[CommandResult]]:
    replies: list[asyncio.Future[CommandResult]] = []

    def post() -> None:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        replies.append(reply)
        sim.supervisor.dispatcher.post(AdapterUnloadAsked(name, reply))

    sim.at(at, post)
    return replies


def test_an_adapter_unloaded_live_loses_its_verdict(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0), runtime_updates=True)
    vllm.no_effect = {"b"}
    replies = _unload(sim, 20, "b")
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert replies[0].result().ok
    assert list(status_of(sim)["adapter_effects"]) == ["a"]  # no stale "NO EFFECT" for b


def test_a_reload_setting_verify_off_drops_the_verdicts(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))
    vllm.no_effect = {"b"}
    sim.reload_result = ReloadResult(
        sim_config(tmp_path, lora={"verify": "off"}), sim_plan("python3")
    )
    sim.at(20, sim.signal(signal.SIGHUP))
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.event("reload_applied") is not None and len(sim.runs) == 1
    assert status_of(sim)["adapter_effects"] == {}  # nothing checks them any more


# --- the readiness round's time ----------------------------------------------------------------


def test_a_slow_readiness_round_feeds_the_watchdog(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))
    vllm.delay = 20.0  # three requests one after another: a minute with no check ending
    sim.at(100, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [ready] = sim.notifier.times("READY=1")
    assert ready - START >= 5 + 60
    fed = [at for at in sim.notifier.times("WATCHDOG=1") if at <= ready]
    gaps = [later - earlier for earlier, later in itertools.pairwise(fed)]
    assert max(gaps) <= 5.0 + 1e-6  # reporter's _WATCHDOG_EVERY, never a minute
    extended = sim.notifier.times("EXTEND_TIMEOUT_USEC=180000000")  # 3 requests x 60 s
    assert extended and START + 5 <= extended[0] < START + 6  # as the round begins


def test_a_health_timeout_above_the_floor_gives_the_requests_longer(tmp_path: Path) -> None:
    health = {"interval": 10, "startup_interval": 1, "timeout": 90, "failure_threshold": 3}
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0), supervisor={"health": health})
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert vllm.read_timeouts == [90.0] * 3  # not /health's 5 s default nor the 60 s floor


def test_the_requests_wait_at_least_the_floor_for_a_first_token(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0))  # supervisor.health.timeout: 5
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert vllm.read_timeouts == [60.0] * 3


# --- strict and a reload ---------------------------------------------------------------------


def test_strict_refuses_a_reload_whose_live_adapter_has_no_effect(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "strict", _crashes_at(40), boots(5.0), runtime_updates=True)
    adapter_folder(tmp_path / "c")
    vllm.no_effect = {"c"}
    adapters = [{"name": n, "path": str(tmp_path / n)} for n in "abc"]
    lora = {"verify": "strict", "runtime_updates": True, "adapters": adapters}
    sim.reload_result = ReloadResult(sim_config(tmp_path, lora=lora), sim_plan("python3"))
    reply: list[asyncio.Future[CommandResult]] = []

    def reload() -> None:
        reply.append(asyncio.get_running_loop().create_future())
        sim.supervisor.dispatcher.post(ReloadAsked(reply[0]))

    sim.at(20, reload)
    sim.at(120, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert not reply[0].result().ok  # `reload` exits 78: the old config keeps serving
    assert "no effect (lora.verify: strict)" in reply[0].result().message
    assert [adapter.name for adapter in sim.supervisor.config.adapters] == ["a", "b"]
    # The crash's restart runs the old config: ready again, not FATAL for c.
    assert sim.states() == ["STARTING", "READY", "BACKOFF", "STARTING", "READY", "STOPPING",
                            "STOPPED"]  # fmt: skip
    assert vllm.asked[-3:] == ["tiny", "a", "b"]


# --- odds and ends ---------------------------------------------------------------------------


def test_a_stop_during_a_live_loads_probe_is_no_error(tmp_path: Path) -> None:
    sim, vllm = effect_sim(tmp_path, "warn", boots(5.0), runtime_updates=True)
    c = adapter_folder(tmp_path / "c")
    sim.at(19, lambda: setattr(vllm, "delay", 30.0))  # ready by then
    replies = _load(sim, 20, "c", c)
    sim.at(25, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert not replies[0].result().ok
    [failed] = [r for r in sim.logs if r["event"] == "adapter_load_failed"]
    assert failed["reason"] == "the supervisor is stopping" and failed["log_level"] == "info"


def test_the_hints_name_the_adapters_served_after_a_live_change(tmp_path: Path) -> None:
    sim, _ = effect_sim(tmp_path, "off", boots(5.0), runtime_updates=True)
    c = adapter_folder(tmp_path / "c")
    _load(sim, 20, "c", c)
    _unload(sim, 25, "a")
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].adapters_served == ["b", "c"]
