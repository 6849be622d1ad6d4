"""Adapters added and removed live against the real vLLM (CPU build), `lora.runtime_updates`
on: a SIGHUP that only changes `lora.adapters` loads or unloads them in the running vLLM (same
pid), and a load vLLM refuses leaves the previous set serving. vLLM's own answers of the
runtime routes are checked too (they are what the operator reads)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import NotifySocket, SupervisorRun, start_supervisor, stop_supervisor, wait_for
from niodoo_supervisor.demo.model import DemoModel
from niodoo_supervisor.supervise.adapter_api import AdapterApi, AdapterApiError
from realvllm import port_of, record_figure, write_demo_config

pytestmark = pytest.mark.e2e

START_TIMEOUT = 300


def _write_adapters(config: Path, adapters: dict[str, Path]) -> None:
    data: dict[str, Any] = yaml.safe_load(config.read_text())
    data["lora"]["adapters"] = [
        {"name": name, "path": str(path)} for name, path in adapters.items()
    ]
    config.write_text(yaml.safe_dump(data))


def _listed(base_url: str) -> dict[str, str | None]:
    data = httpx.get(f"{base_url}/v1/models", timeout=10, trust_env=False).json()["data"]
    return {item["id"]: item.get("parent") for item in data}


def _completion(base_url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hello", "max_tokens": 2, "temperature": 0}
    return httpx.post(f"{base_url}/v1/completions", json=body, timeout=60, trust_env=False)


def _reload(run: SupervisorRun, event: str, count: int) -> None:
    """SIGHUP, then wait for the `count`th `event`."""
    run.signal(signal.SIGHUP)
    wait_for(
        lambda: len([r for r in run.events() if r.get("event") == event]) >= count,
        120,
        f"{event} number {count}",
    )


def _broken_copy(source: Path, target: Path) -> Path:
    """An adapter whose config is fine and whose weights file is not: the reload's preflight
    reads the safetensors header and refuses it before vLLM is asked (vLLM's own refusals of
    a load are the AdapterApi test below, and the rollback after one the unit tier's)."""
    shutil.copytree(source, target)
    (target / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return target


def test_adapters_added_and_removed_live_keep_the_same_vllm(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "live-adapters"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    data: dict[str, Any] = yaml.safe_load(config.read_text())
    data["lora"]["runtime_updates"] = True
    config.write_text(yaml.safe_dump(data))
    alpha, beta = demo_model.adapters["alpha"], demo_model.adapters["beta"]
    _write_adapters(config, {"alpha": alpha})
    base_url = f"http://127.0.0.1:{port_of(config)}"
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        run.wait_state("READY", START_TIMEOUT)
        warned = [r for r in run.events() if r.get("event") == "config_problem"]
        assert any("development feature" in r.get("problem", "") for r in warned), warned
        pid = run.status()["vllm_pid"]
        assert set(_listed(base_url)) == {"tiny", "alpha"}

        # Added: loaded live, listed with the served model as parent, and it answers. Asked
        # with `niodoo-supervisor reload` (systemd's ExecReload): it answers once loaded.
        _write_adapters(config, {"alpha": alpha, "beta": beta})
        took = time.monotonic()
        reloaded = run.cli("reload")
        took = time.monotonic() - took
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "lora.adapters without a restart (loaded beta)" in reloaded.stdout
        assert _listed(base_url)["beta"] == "tiny"
        assert _completion(base_url, "beta").status_code == 200
        assert run.status()["vllm_pid"] == pid and run.states() == ["STARTING", "READY"]
        assert run.status()["adapters"] == ["alpha", "beta"]
        record_figure(
            f"adapter added live by `niodoo-supervisor reload` in {took:.2f}s (a restart: 30-100 s here)"
        )

        # A broken adapter: the reload is refused, the previous set keeps serving.
        broken = _broken_copy(beta, tmp / "broken")
        _write_adapters(config, {"alpha": alpha, "beta": beta, "broken": broken})
        refused = run.cli("reload")
        assert refused.returncode == 78, refused.stdout + refused.stderr  # `systemctl reload` fails
        said = refused.stdout + refused.stderr
        assert "refused, the running config stays" in said and "adapter_model.safetensors" in said
        record_figure(f"a broken adapter refused by the reload's preflight: {said.strip()[-160:]}")
        assert set(_listed(base_url)) == {"tiny", "alpha", "beta"}
        assert _completion(base_url, "beta").status_code == 200
        assert run.status()["vllm_pid"] == pid and run.states() == ["STARTING", "READY"]

        # The operator's own live change, through the control socket: listed, counted, gone.
        loaded = run.cli("adapters", "load", "gamma", str(beta))
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        assert _listed(base_url)["gamma"] == "tiny"
        listed = run.cli("adapters", "list")
        assert "gamma (live only, not in the YAML)" in listed.stdout, listed.stdout
        served = wait_for(
            lambda: run.metrics()["niodoo_supervisor_adapters_served"] == 3 or None,
            60,
            "the next check counting alpha, beta and gamma as served",
        )
        assert served and run.metrics()["niodoo_supervisor_adapters_expected"] == 3
        unloaded = run.cli("adapters", "unload", "gamma")
        assert unloaded.returncode == 0, unloaded.stdout + unloaded.stderr
        assert "gamma" not in _listed(base_url)

        # Removed: unloaded live, no longer listed, same vLLM.
        _write_adapters(config, {"alpha": alpha})
        _reload(run, "adapter_unloaded", 2)  # the first was the `adapters unload gamma` above
        assert set(_listed(base_url)) == {"tiny", "alpha"}
        assert _completion(base_url, "beta").status_code == 404
        assert run.status()["vllm_pid"] == pid and run.states() == ["STARTING", "READY"]

        # vLLM 0.32's own answers of the runtime routes, as documented.
        asyncio.run(_vllm_answers(base_url, tmp / "nope", demo_model.adapters["wide"]))
        wait_for(lambda: _completion(base_url, "alpha").status_code == 200, 30, "alpha answers")
        assert run.status()["vllm_pid"] == pid and run.states() == ["STARTING", "READY"]
    finally:
        stop_supervisor(run)
        notify.close()


async def _vllm_answers(base_url: str, missing: Path, wide: Path) -> None:
    api = AdapterApi(base_url, api_key=None, timeout=120)
    try:
        with pytest.raises(AdapterApiError) as again:
            await api.load("alpha", "/anywhere")
        assert again.value.status == 400 and "has already been loaded" in again.value.reason
        with pytest.raises(AdapterApiError) as absent:
            await api.load("nope", str(missing))
        assert absent.value.status == 404, absent.value.reason
        with pytest.raises(AdapterApiError) as rank:
            await api.load("wide", str(wide))
        assert rank.value.status in (400, 500), rank.value.reason
        assert "greater than max_lora_rank" in rank.value.reason
        with pytest.raises(AdapterApiError) as unknown:
            await api.unload("nope")
        assert unknown.value.status == 404 and "cannot be found" in unknown.value.reason
        record_figure(
            f"vLLM runtime routes: already loaded {again.value.status}, missing path "
            f"{absent.value.status}, rank 64 {rank.value.status}, unknown unload "
            f"{unknown.value.status}"
        )
    finally:
        await api.aclose()
