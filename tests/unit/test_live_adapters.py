"""Live adapter changes against vLLM's runtime LoRA routes, served by an httpx.MockTransport
that answers as vLLM 0.32 does (bodies copied from its source): the errors reach the operator
with vLLM's own reason, and a failed change leaves the previous set serving."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from structlog.testing import capture_logs

from adapter_routes import FakeVllm, adapter_api, adapter_folder, vllm_error
from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.launch.plan import plan_launch
from niodoo_supervisor.supervise.adapter_api import AdapterApiError
from niodoo_supervisor.supervise.incidents import AdapterLoadAsked, AdapterUnloadAsked
from niodoo_supervisor.supervise.live_adapters import (
    AdapterChange,
    LiveAdapters,
    adapter_change,
)
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard


def _config(tmp_path: Path, adapters: dict[str, str], *, runtime_updates: bool = True) -> Config:
    document = {
        "server": {"python": "python3", "port": 8000},
        "model": {"path": str(tmp_path / "model"), "served_name": "tiny"},
        "lora": {
            "enabled": True,
            "max_loras": 4,
            "max_lora_rank": 16,
            "runtime_updates": runtime_updates,
            "adapters": [{"name": name, "path": path} for name, path in adapters.items()],
        },
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, {})
    assert config is not None, [problem.format() for problem in problems]
    return config


class RecordingProber:
    expected: list[str] | None = None

    def expect_adapters(self, names: Any) -> None:
        self.expected = list(names)


def _live(
    config: Config, vllm: FakeVllm, timeout: float = 60.0
) -> tuple[LiveAdapters, StatusBoard]:
    status = StatusBoard()
    live = LiveAdapters(
        config, plan_launch(config, None, {}), status, adapter_api(vllm, timeout), asyncio.Event()
    )
    return live, status


# --- the API client: vLLM's errors, word for word ---------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        (
            vllm_error(400, "The lora adapter 'a' has already been loaded. If you want ..."),
            400,
            "HTTP 400: The lora adapter 'a' has already been loaded. If you want ...",
        ),
        (
            vllm_error(404, "Loading lora a failed: No adapter found for /nope", "NotFoundError"),
            404,
            "HTTP 404: Loading lora a failed: No adapter found for /nope",
        ),
        (
            vllm_error(
                500, "LoRA rank 32 is greater than max_lora_rank 16.", "InternalServerError"
            ),
            500,
            "HTTP 500: LoRA rank 32 is greater than max_lora_rank 16.",
        ),
        (
            httpx.Response(400, json={"message": "old style", "type": "x"}),
            400,
            "HTTP 400: old style",
        ),
        (httpx.Response(500, text="<html>Internal Server Error"), 500, "HTTP 500: <html>Internal"),
        (httpx.Response(404, json={"detail": "Not Found"}), 404, "no runtime LoRA routes"),
    ],
)
async def test_a_refused_load_carries_vllm_s_reason(
    answer: httpx.Response, status: int, reason: str
) -> None:
    api = adapter_api(lambda request: answer)
    with pytest.raises(AdapterApiError) as refused:
        await api.load("a", "/ad/a")
    assert refused.value.status == status
    assert reason in refused.value.reason


async def test_a_load_that_times_out_says_so() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(AdapterApiError, match=r"no answer within 2s") as refused:
        await adapter_api(hang, timeout=2.0).load("a", "/ad/a")
    assert refused.value.status is None


async def test_a_model_list_that_is_not_json_is_anvllm_error() -> None:
    api = adapter_api(lambda request: httpx.Response(200, text="{not json"))
    with pytest.raises(AdapterApiError, match="did not answer JSON"):
        await api.listed()


def test_the_change_between_two_sets() -> None:
    change = adapter_change({"a": "/a", "b": "/b"}, {"a": "/a2", "c": "/c"})
    assert change == AdapterChange(
        load={"c": "/c"}, replace={"a": ("/a", "/a2")}, unload={"b": "/b"}
    )
    assert adapter_change({"a": "/a"}, {"a": "/a"}).empty


# --- changes: verified, or rolled back --------------------------------------------------------


async def test_a_reload_loads_new_adapters_and_unloads_removed_ones(tmp_path: Path) -> None:
    a, b, c = (adapter_folder(tmp_path / name) for name in "abc")
    vllm = FakeVllm(loaded={"a": a, "b": b})
    live, status = _live(_config(tmp_path, {"a": a, "b": b}), vllm)
    prober = RecordingProber()
    with capture_logs() as logs:
        result = await live.reloaded(_config(tmp_path, {"a": a, "c": c}).adapters, prober)
    assert result is not None and result.ok, result
    assert vllm.loaded == {"a": a, "c": c}
    assert vllm.calls == [("load", "c"), ("unload", "b")]  # new first, removals last
    assert status.adapters == ["a", "c"] and prober.expected == ["a", "c"]
    events = [(log["event"], log.get("adapter")) for log in logs]
    assert ("adapter_loaded", "c") in events and ("adapter_unloaded", "b") in events


async def test_a_failed_load_rolls_back_and_keeps_the_previous_set(tmp_path: Path) -> None:
    a, b, c = (adapter_folder(tmp_path / name) for name in "abc")
    moved = adapter_folder(tmp_path / "a2")
    vllm = FakeVllm(loaded={"a": a, "b": b})
    vllm.fail["c"] = lambda request: vllm_error(500, "Invocation of add_lora method failed", "x")
    live, status = _live(_config(tmp_path, {"a": a, "b": b}), vllm)
    # z loads, c fails: z is unloaded again; a's move and b's removal never start.
    change = AdapterChange(load={"z": moved, "c": c}, replace={"a": (a, moved)}, unload={"b": b})
    with capture_logs() as logs:
        result = await live.apply(change)
    assert not result.ok
    assert result.message.startswith(
        "load of adapter 'c' failed: HTTP 500: Invocation of add_lora method failed"
    )
    assert "still serving: a, b" in result.message
    assert vllm.loaded == {"a": a, "b": b}
    assert vllm.calls == [("load", "z"), ("load", "c"), ("unload", "z")]
    assert status.adapters == ["a", "b"]
    [failed] = [log for log in logs if log["event"] == "adapter_load_failed"]
    assert failed["adapter"] == "c" and "add_lora" in failed["reason"]


async def test_a_failed_move_loads_the_old_path_back(tmp_path: Path) -> None:
    a, moved = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "a2")
    vllm = FakeVllm(loaded={"a": a})
    vllm.fail[moved] = lambda request: vllm_error(404, "No adapter found", "NotFoundError")
    live, status = _live(_config(tmp_path, {"a": a}), vllm)
    with capture_logs() as logs:
        result = await live.apply(AdapterChange(replace={"a": (a, moved)}))
    assert not result.ok and "HTTP 404: No adapter found" in result.message
    assert vllm.calls == [("unload", "a"), ("load", "a"), ("load", "a")]
    assert vllm.loaded == {"a": a} and status.adapters == ["a"]
    assert [log["step"] for log in logs if log["event"] == "adapter_rolled_back"] == ["load"]


async def test_a_rollback_that_fails_too_is_reported_and_the_status_tells_the_truth(
    tmp_path: Path,
) -> None:
    a, moved = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "a2")
    vllm = FakeVllm(loaded={"a": a})
    vllm.fail["a"] = lambda request: vllm_error(500, "disk gone", "InternalServerError")
    live, status = _live(_config(tmp_path, {"a": a}), vllm)
    with capture_logs() as logs:
        result = await live.apply(AdapterChange(replace={"a": (a, moved)}))
    assert not result.ok and "still serving: no adapters" in result.message
    assert [log["adapter"] for log in logs if log["event"] == "adapter_rollback_failed"] == ["a"]
    assert status.adapters == []


async def test_a_load_vllm_accepts_but_does_not_list_is_rolled_back(tmp_path: Path) -> None:
    a, c = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "c")
    vllm = FakeVllm(loaded={"a": a})
    vllm.models_override = lambda request: httpx.Response(
        200,
        json={"data": [{"id": "tiny"}, {"id": "a", "parent": "tiny"}, {"id": "c", "parent": "x"}]},
    )
    live, _ = _live(_config(tmp_path, {"a": a}), vllm)
    result = await live.apply(AdapterChange(load={"c": c}))
    assert not result.ok and "parent 'x' (expected parent 'tiny')" in result.message
    assert vllm.loaded == {"a": a}


@pytest.mark.parametrize(
    ("rank", "folder_has", "reason"),
    [
        (32, "weights", "rank 32 is above the running vLLM's --max-lora-rank 16"),
        (8, "nothing", "is not a directory"),
        (8, "config", "has no adapter_model.safetensors"),
    ],
)
async def test_preflight_refuses_before_vllm_is_asked(
    tmp_path: Path, rank: int, folder_has: str, reason: str
) -> None:
    vllm = FakeVllm()
    live, _ = _live(_config(tmp_path, {}), vllm)
    path = tmp_path / "new"
    if folder_has != "nothing":
        adapter_folder(path, rank=rank)
        if folder_has == "config":
            (path / "adapter_model.safetensors").unlink()
    result = await live.apply(AdapterChange(load={"new": str(path)}))
    assert not result.ok and reason in result.message
    assert vllm.calls == []


# --- the operator's commands ------------------------------------------------------------------


async def _ask(live: LiveAdapters, incident: Any, state: State = State.READY) -> CommandResult:
    await live.command(incident, state, RecordingProber())
    assert incident.reply.done()
    result: CommandResult = incident.reply.result()
    return result


def _reply() -> asyncio.Future[CommandResult]:
    return asyncio.get_running_loop().create_future()


async def test_a_command_load_is_live_only_and_a_reload_keeps_it(tmp_path: Path) -> None:
    a, extra = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "extra")
    vllm = FakeVllm(loaded={"a": a})
    live, status = _live(_config(tmp_path, {"a": a}), vllm)
    loaded = await _ask(live, AdapterLoadAsked("extra", extra, _reply()))
    assert (
        loaded.ok and "live only" in loaded.message and "not written to the YAML" in loaded.message
    )
    assert status.adapters == ["a", "extra"] and status.adapters_live_only == ["extra"]
    assert "warnings" not in loaded.details  # max_loras 4 holds both
    with capture_logs() as logs:
        await live.reloaded(_config(tmp_path, {}).adapters, RecordingProber())
    assert vllm.loaded == {"extra": extra}  # `a` left the YAML; `extra` is kept, and said so
    [kept] = [log for log in logs if log["event"] == "live_adapter_kept"]
    assert kept["adapters"] == ["extra"]
    with capture_logs() as logs:
        await live.aclose()
    assert [log["adapters"] for log in logs if log["event"] == "live_adapter_dropped"] == [
        ["extra"]
    ]


async def test_command_refusals_name_the_reason(tmp_path: Path) -> None:
    a = adapter_folder(tmp_path / "a")
    vllm = FakeVllm(loaded={"a": a})
    live, _ = _live(_config(tmp_path, {"a": a}), vllm)
    again = await _ask(live, AdapterLoadAsked("a", a, _reply()))
    assert not again.ok and "already loaded" in again.message
    unknown = await _ask(live, AdapterUnloadAsked("nope", _reply()))
    assert not unknown.ok and "'nope' is not loaded (loaded: a)" in unknown.message
    starting = await _ask(live, AdapterUnloadAsked("a", _reply()), State.STARTING)
    assert not starting.ok and "still starting" in starting.message
    unloaded = await _ask(live, AdapterUnloadAsked("a", _reply()))
    assert unloaded.ok and "the next reload or restart loads it again" in unloaded.message
    assert vllm.loaded == {}
    off, _ = _live(_config(tmp_path, {"a": a}, runtime_updates=False), vllm)
    refused = await _ask(off, AdapterLoadAsked("b", a, _reply()))
    assert not refused.ok and "lora.runtime_updates is false" in refused.message
    assert vllm.calls == [("unload", "a")]


async def test_more_adapters_than_the_cpu_cache_holds_load_with_a_warning(tmp_path: Path) -> None:
    a, b = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "b")
    config = _config(tmp_path, {"a": a})
    vllm = FakeVllm(loaded={"a": a})
    status = StatusBoard()
    live = LiveAdapters(
        config, plan_launch(config, None, {}), status, adapter_api(vllm), asyncio.Event()
    )
    live.max_cpu_loras = 1
    result = await live.apply(AdapterChange(load={"b": b}))
    assert result.ok and vllm.loaded == {"a": a, "b": b}
    assert result.details["warnings"] == [
        "2 adapters but only 1 fit in vLLM's CPU cache (max_cpu_loras): the least recently "
        "used are reloaded from disk when asked for"
    ]


async def test_the_status_is_written_before_the_outcome_is_logged(tmp_path: Path) -> None:
    a, c = adapter_folder(tmp_path / "a"), adapter_folder(tmp_path / "c")
    config = _config(tmp_path, {"a": a})
    status = StatusBoard()
    with capture_logs() as logs:
        live = LiveAdapters(
            config,
            plan_launch(config, None, {}),
            status,
            adapter_api(FakeVllm(loaded={"a": a})),
            asyncio.Event(),
            write_status=lambda: logs.append(
                {"event": "status_written", "adapters": list(status.adapters)}
            ),
        )
        await live.apply(AdapterChange(load={"c": c}))
    told = [(log["event"], log.get("adapters")) for log in logs]
    assert told == [
        ("status_written", ["a"]),  # at the run's start
        ("status_written", ["a", "c"]),
        ("adapter_loaded", None),
    ]
