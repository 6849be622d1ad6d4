"""Live adapter changes in the loop: a reload that only changes `lora.adapters` (with
`lora.runtime_updates`) loads and unloads them in the running vLLM, and `adapters load|unload`
commands are answered wherever the loop waits. Scripted histories in virtual time; vLLM's
adapter routes are an httpx.MockTransport."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from adapter_routes import FakeVllm, adapter_api, adapter_folder, vllm_error
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.supervise.control_target import SupervisorControl
from niodoo_supervisor.supervise.incidents import (
    AdapterLoadAsked,
    AdapterUnloadAsked,
    ReloadAsked,
    ReloadResult,
)
from supervise_sim import START, FakeRun, Sim, boots, sim_config, sim_plan

LIVE = {"runtime_updates": True}


def _live_sim(
    tmp_path: Path, *scripts: Callable[[FakeRun], None], live: bool = True
) -> tuple[Sim, FakeVllm]:
    a, b = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "b")
    config = sim_config(tmp_path, lora=LIVE if live else {})
    assert [adapter.path for adapter in config.adapters] == [a, b]
    sim = Sim(tmp_path, scripts=list(scripts), config=config)
    vllm = FakeVllm(loaded={"a": a, "b": b})
    sim.supervisor.adapter_api_for = lambda config, api_key: adapter_api(vllm)
    return sim, vllm


def _with_adapters(tmp_path: Path, names: str) -> Config:
    adapters = [{"name": name, "path": str(tmp_path / name)} for name in names]
    return sim_config(tmp_path, lora={**LIVE, "adapters": adapters})


class Replies:
    """Commands posted at given times; their answers, in order."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.futures: list[asyncio.Future[CommandResult]] = []

    def load(self, at: float, name: str, path: str) -> None:
        self.sim.at(at, lambda: self._post(lambda reply: AdapterLoadAsked(name, path, reply)))

    def unload(self, at: float, name: str) -> None:
        self.sim.at(at, lambda: self._post(lambda reply: AdapterUnloadAsked(name, reply)))

    def _post(self, make: Callable[[asyncio.Future[CommandResult]], object]) -> None:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.futures.append(reply)
        incident = make(reply)
        assert isinstance(incident, AdapterLoadAsked | AdapterUnloadAsked | ReloadAsked)
        self.sim.supervisor.dispatcher.post(incident)

    def reload(self, at: float) -> None:
        """`niodoo-supervisor reload` (the control API): answered with the reload's outcome."""
        self.sim.at(at, lambda: self._post(ReloadAsked))

    def answers(self) -> list[tuple[bool, str]]:
        assert all(future.done() for future in self.futures), "a command was never answered"
        return [(future.result().ok, future.result().message) for future in self.futures]


def test_a_reload_adding_an_adapter_loads_it_live_without_a_restart(tmp_path: Path) -> None:
    sim, vllm = _live_sim(tmp_path, boots(5.0), boots(5.0))
    c = adapter_folder(tmp_path / "c")
    sim.reload_result = ReloadResult(_with_adapters(tmp_path, "abc"), sim_plan("python3"))
    replies = Replies(sim)
    replies.reload(20)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states() == ["STARTING", "READY", "STOPPING", "STOPPED"] and len(sim.runs) == 1
    [(ok, answer)] = replies.answers()  # given once vLLM has loaded it, not before
    assert (ok, answer) == (True, "taken: applied lora.adapters without a restart (loaded c)")
    assert vllm.loaded == {"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "c": c}
    applied = sim.event("reload_applied")
    assert applied is not None and applied["keys"] == ["lora.adapters"]
    loaded = sim.event("adapter_loaded")
    assert loaded is not None and loaded["adapter"] == "c" and loaded["parent"] == "tiny"
    assert sim.probers[-1].expected == ["a", "b", "c"]  # checked like the others from now on
    assert sim.supervisor.reporter.status.adapters == ["a", "b", "c"]


def test_a_failed_live_load_keeps_the_previous_set_and_vllm_running(tmp_path: Path) -> None:
    sim, vllm = _live_sim(tmp_path, boots(5.0), boots(5.0))
    adapter_folder(tmp_path / "c")
    vllm.fail["c"] = lambda request: vllm_error(
        500, "LoRA rank 16 is greater than max_lora_rank 8."
    )
    sim.reload_result = ReloadResult(_with_adapters(tmp_path, "ac"), sim_plan("python3"))
    replies = Replies(sim)
    replies.reload(20)
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 1 and "BACKOFF" not in sim.states()
    # `systemctl reload` fails: the change it asked for did not happen.
    [(ok, answer)] = replies.answers()
    assert not ok and answer.startswith("the live adapter change failed")
    assert "greater than max_lora_rank 8" in answer
    last = sim.supervisor.reporter.status.last_reload
    assert last is not None and last["ok"] is False
    assert set(vllm.loaded) == {"a", "b"}  # b's removal never started: the change is undone
    failed = sim.event("adapter_load_failed")
    assert failed is not None and "greater than max_lora_rank 8" in failed["reason"]
    # Refused: the running prober goes on (the reload's is closed unused), told the set served.
    assert sim.probers[-1].closed and sim.probers[-2].expected == ["a", "b"]
    assert [adapter.name for adapter in sim.supervisor.config.adapters] == ["a", "b"]


def test_commands_are_answered_while_vllm_runs(tmp_path: Path) -> None:
    sim, vllm = _live_sim(tmp_path, boots(5.0))
    extra = adapter_folder(tmp_path / "extra")
    replies = Replies(sim)
    replies.load(2, "extra", extra)  # still starting
    replies.load(10, "extra", extra)
    replies.unload(12, "a")
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [starting, loaded, unloaded] = replies.answers()
    assert starting == (False, "vLLM is still starting: try again once it is ready")
    assert loaded[0] and "live only" in loaded[1]
    assert unloaded[0] and "still in lora.adapters" in unloaded[1]
    assert set(vllm.loaded) == {"b", "extra"} and len(sim.runs) == 1
    assert sim.supervisor.reporter.status.adapters_live_only == ["extra"]
    dropped = sim.event("live_adapter_dropped")  # the stop ends the run that had it
    assert dropped is not None and dropped["adapters"] == ["extra"]


def test_commands_without_a_running_vllm_are_refused(tmp_path: Path) -> None:
    def crash(run: FakeRun) -> None:
        run.sim.after(5, lambda: run.exit(1))

    sim, vllm = _live_sim(tmp_path, boots(5.0, then=crash), boots(5.0))
    replies = Replies(sim)
    replies.load(11, "x", str(tmp_path / "a"))  # the backoff: 10.5 to 12.5
    # Posted with the stop: the loop ends before a watcher takes it; the dispatcher answers.
    sim.at(30, sim.signal(signal.SIGTERM))
    replies.unload(30, "a")
    assert sim.play() == 0
    assert replies.answers() == [
        (False, "vLLM is not running"),
        (False, "the supervisor is stopping"),
    ]
    assert vllm.calls == []


def test_commands_with_runtime_updates_off_name_the_key(tmp_path: Path) -> None:
    sim, vllm = _live_sim(tmp_path, boots(5.0), live=False)
    replies = Replies(sim)
    replies.unload(10, "a")
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [(ok, message)] = replies.answers()
    assert not ok and message.startswith("lora.runtime_updates is false")
    assert vllm.calls == []


def test_the_adapter_list_marks_what_is_live_only(tmp_path: Path) -> None:
    sim, _ = _live_sim(tmp_path, boots(5.0))
    extra = adapter_folder(tmp_path / "extra")
    Replies(sim).load(10, "extra", extra)
    listed: list[asyncio.Task[CommandResult]] = []
    control = SupervisorControl(sim.supervisor)
    sim.at(15, lambda: listed.append(asyncio.ensure_future(control.adapters())))
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [task] = listed
    answer = task.result()
    assert answer.message == "tiny + adapters a, b, extra (live only, not in the YAML)"
    assert answer.details["live_only"] == ["extra"]


def test_a_reload_of_the_same_yaml_brings_back_an_adapter_unloaded_by_command(
    tmp_path: Path,
) -> None:
    sim, vllm = _live_sim(tmp_path, boots(5.0))
    sim.reload_result = ReloadResult(_with_adapters(tmp_path, "ab"), sim_plan("python3"))
    replies = Replies(sim)
    replies.unload(10, "a")
    replies.reload(20)  # the YAML is the running one: only the served set differs
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [unloaded, reloaded] = replies.answers()
    assert unloaded[0]
    assert reloaded == (
        True,
        "taken: the config is unchanged; the served adapters made its own again (loaded a)",
    )
    assert set(vllm.loaded) == {"a", "b"} and len(sim.runs) == 1


def test_an_adapter_change_while_vllm_starts_restarts_it(tmp_path: Path) -> None:
    sim, vllm = _live_sim(tmp_path, boots(5.0), boots(5.0))
    adapter_folder(tmp_path / "c")
    sim.reload_result = ReloadResult(_with_adapters(tmp_path, "abc"), sim_plan("python3"))
    replies = Replies(sim)
    replies.reload(2)  # not listening yet: it cannot load, and it serves nobody
    sim.at(30, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    [(ok, answer)] = replies.answers()
    assert ok and answer == (
        "taken: restarting vLLM now (config changed while vLLM starts: lora.adapters)"
    )
    assert len(sim.runs) == 2 and vllm.calls == [] and "BACKOFF" not in sim.states()


def test_systemds_watchdog_is_fed_around_an_adapter_command(tmp_path: Path) -> None:
    sim, _ = _live_sim(tmp_path, boots(5.0))
    Replies(sim).load(10, "extra", adapter_folder(tmp_path / "extra"))
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    at_command = [
        field
        for sent in sim.notifier.sent
        if START + 10 <= sent.at < START + 11
        for field in sent.fields
    ]
    assert "EXTEND_TIMEOUT_USEC=120000000" in at_command and "WATCHDOG=1" in at_command
