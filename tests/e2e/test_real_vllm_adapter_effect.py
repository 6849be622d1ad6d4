"""The effect probe against the real vLLM (CPU build): adapters vLLM loads but that change
nothing are flagged, the good ones pass.

vLLM is started directly (not through the supervisor, whose preflight refuses `prefixed`
before launch) with alpha, untrained (all-zero lora_B) and prefixed (`language_model.` module
names), and the probe runs against it as a library; the same start measures what a probe
round costs. A second start goes through the supervisor: `lora.verify: warn` reports the
no-op adapter and is ready anyway; `strict` refuses a live load of one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import NotifySocket, start_supervisor, stop_supervisor, wait_for
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.demo.model import DemoModel
from niodoo_supervisor.launch.plan import plan_launch
from niodoo_supervisor.supervise.effect_probe import Effect, EffectProbe, Verdict
from niodoo_supervisor.supervise.probes import vllm_client
from realvllm import port_of, record_figure, write_demo_config

pytestmark = pytest.mark.e2e

START_TIMEOUT = 300
ROUNDS = 7


def _set(config: Path, adapters: dict[str, Path], **lora: Any) -> None:
    data: dict[str, Any] = yaml.safe_load(config.read_text())
    data["lora"]["adapters"] = [
        {"name": name, "path": str(path)} for name, path in adapters.items()
    ]
    data["lora"].update(lora)
    config.write_text(yaml.safe_dump(data))


def _listed(base_url: str) -> set[str] | None:
    try:
        response = httpx.get(f"{base_url}/v1/models", timeout=5, trust_env=False)
        return {item["id"] for item in response.json()["data"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def _rounds(base_url: str, adapters: list[str]) -> tuple[list[Effect], list[float]]:
    """The verdicts of the first round, and each later round's cost per request (the first
    request of the CPU build warms it up: tens of seconds on a shared machine)."""
    async with vllm_client(base_url, None, 60) as client:
        probe = EffectProbe(client, "tiny", timeout=START_TIMEOUT)
        first = await probe.probe(adapters)
        assert probe.last_cost is not None
        record_figure(f"effect probe, first round (warm-up): {probe.last_cost:.2f}s per request")
        costs = []
        for _ in range(ROUNDS):
            await probe.probe(adapters)
            assert probe.last_cost is not None
            costs.append(probe.last_cost)
    return first, costs


def test_vllm_alone_serves_no_op_adapters_and_the_probe_flags_them(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "effect-direct"
    tmp.mkdir()
    config_path = write_demo_config(tmp, vllm_python, demo_model)
    adapters = {
        "alpha": demo_model.adapters["alpha"],
        "untrained": demo_model.broken["untrained"],
        "prefixed": demo_model.broken["prefixed"],
    }
    _set(config_path, adapters, max_cpu_loras=4)
    config, problems = load_config(config_path, dict(os.environ))
    assert config is not None, [problem.format() for problem in problems]
    plan = plan_launch(config, None, dict(os.environ))
    base_url = f"http://127.0.0.1:{port_of(config_path)}"
    env = plan.child_environment(dict(os.environ))
    env.pop("VLLM_LOGGING_CONFIG_PATH", None)  # vLLM's own logging, as alone
    log = (tmp / "vllm.log").open("wb")
    child = subprocess.Popen(
        plan.argv,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: child.poll() is not None or (_listed(base_url) or set()) >= {"tiny", *adapters},
            START_TIMEOUT,
            "vLLM listing alpha, untrained and prefixed",
            interval=0.5,
        )
        output = (tmp / "vllm.log").read_text(errors="replace")
        assert child.poll() is None, f"vLLM exited {child.returncode}: {output[-3000:]}"
        loaded = [line for line in output.splitlines() if "prefixed" in line]
        record_figure(f"vLLM 0.32 with the `prefixed` adapter: listed; its lines: {loaded[-2:]}")

        first, costs = asyncio.run(_rounds(base_url, list(adapters)))
        verdicts = {effect.adapter: effect for effect in first}
        for effect in first:
            record_figure(f"effect probe, {effect.adapter}: {effect.evidence()}")
        assert verdicts["alpha"].verdict is Verdict.EFFECT
        assert verdicts["untrained"].verdict is Verdict.NO_EFFECT
        assert verdicts["untrained"].largest_delta == 0.0  # the base's, to the last digit
        assert verdicts["prefixed"].verdict is Verdict.NO_EFFECT
        record_figure(
            f"effect probe cost per request (one base + {len(adapters)} adapters per round), "
            f"median of {ROUNDS} rounds: {statistics.median(costs) * 1000:.1f} ms "
            f"(min {min(costs) * 1000:.1f}, max {max(costs) * 1000:.1f})"
        )
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
        log.close()


def test_the_supervisor_reports_a_no_op_adapter_and_strict_refuses_one_live(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "effect-supervised"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    untrained = demo_model.broken["untrained"]
    adapters = {"alpha": demo_model.adapters["alpha"], "untrained": untrained}
    _set(config, adapters, runtime_updates=True, verify="warn", max_cpu_loras=4)
    base_url = f"http://127.0.0.1:{port_of(config)}"
    run = start_supervisor(config, tmp / "state", NotifySocket(tmp / "notify.sock"), tmp)
    try:
        run.wait_state("READY", START_TIMEOUT)
        # warn: reported with the evidence, counted, and ready anyway
        event = run.event("adapter_no_effect", adapter="untrained")
        assert event is not None and event["largest_delta"] == "0.0", event
        assert run.event("adapter_no_effect", adapter="alpha") is None
        status = run.status()
        effects = status["adapter_effects"]
        assert effects["untrained"]["verdict"] == "no_effect"
        assert (
            effects["alpha"]["verdict"] == "effect"
        )  # other top tokens (the tiny model: 0.02 nats)
        assert status["events"]["rules"]["adapter_no_effect"]["count"] == 1
        metrics = run.metrics()
        assert metrics['niodoo_supervisor_adapter_no_effect_total{adapter="untrained"}'] == 1
        assert metrics.get('niodoo_supervisor_adapter_no_effect_total{adapter="alpha"}', 0) == 0
        shown = run.cli("status")
        assert "untrained (NO EFFECT: serves the base model's output)" in shown.stdout, shown

        # strict: a live load of a no-op adapter is undone and refused with the evidence
        _set(config, {**adapters, "zeros": untrained}, verify="strict")
        took = time.monotonic()
        refused = run.cli("reload")
        took = time.monotonic() - took
        output = refused.stdout + refused.stderr
        assert refused.returncode == 78, output
        assert "no effect (lora.verify: strict)" in output, output
        assert "zeros" not in (_listed(base_url) or {"zeros"})
        # Undone, so no verdict is kept for it; its event keeps the evidence.
        assert "zeros" not in run.status()["adapter_effects"]
        zeros = run.event("adapter_no_effect", adapter="zeros")
        assert zeros is not None and zeros["largest_delta"] == "0.0", zeros
        assert run.states() == ["STARTING", "READY"]
        record_figure(f"a no-op adapter loaded, probed and undone live (strict) in {took:.2f}s")
    finally:
        stop_supervisor(run)
