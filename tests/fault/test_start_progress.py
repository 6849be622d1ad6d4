"""What a start of the fake vLLM logs up to READY: one `progress` record per phase with vLLM's
numbers (the weight-shard bar only at its quarters), no `vllm_event` with vLLM's whole line,
a `ready` record naming the model, the adapters and the address, and STATUS= at most once a
second however many phase lines vLLM writes."""

from __future__ import annotations

import math
import re

from fault_supervisor import Launcher, assert_nothing_left, stop
from harness import wait_for


def test_the_records_to_ready_are_the_phases_with_numbers_then_ready(supervise: Launcher) -> None:
    # 2 s of weight loading: the fake's tqdm bar writes 11 lines (0/10 .. 10/10).
    run = supervise("load_seconds=2")
    ready = wait_for(lambda: run.event("ready"), 30, "the ready record")
    assert ready is not None
    records = run.events()
    upto = records[: records.index(ready) + 1]
    # No NVML binding here: one line says the GPU memory checks are skipped.
    assert [r["event"] for r in upto if r["event"] not in ("progress", "adapter_effect")] == [
        "starting", "control_listening", "gpu_nvml_unavailable", "state_changed",
        "state_changed", "ready",
    ]  # fmt: skip
    progress = [r for r in upto if r["event"] == "progress"]
    expected = [
        ("starting", r"vLLM 0\.32\.0"),
        ("engine_init", "initializing the engine"),
        ("loading_weights", r"loading weights of \S*/model"),  # a long path keeps its end
        ("loading_weights", "loading weights: 3/10 shards"),
        ("loading_weights", "loading weights: 5/10 shards"),
        ("loading_weights", "loading weights: 8/10 shards"),
        ("weights_loaded", r"weights loaded in \d+\.\d\d s"),
        ("kv_cache", "KV cache 2,097,152 tokens"),
        ("engine_ready", r"engine ready in \d+\.\d\d s"),
        ("adapter_loaded", "adapter a loaded"),
        ("adapter_loaded", "adapter b loaded"),
        ("listening", r"HTTP server starting on http://127\.0\.0\.1:\d+"),
        ("startup_complete", "HTTP server started"),
    ]
    assert len(progress) == len(expected), [r["summary"] for r in progress]
    for record, (phase, summary) in zip(progress, expected, strict=True):
        assert record["phase"] == phase and re.fullmatch(summary, record["summary"]), record
        assert "line" not in record
    elapsed = [float(r["elapsed_s"]) for r in progress]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= float(ready["elapsed_s"])
    # The ready record names what is served; the state change stays beside it.
    address = re.fullmatch(r"127\.0\.0\.1:(\d+)", ready["address"])
    assert address is not None and ready["model"] == "tiny"
    assert ready["summary"] == (
        f"serving tiny with adapters a, b on {ready['address']} after {ready['elapsed_s']} s"
    )
    assert run.event("state_changed", new="READY") is not None
    # STATUS=: each at least a second after the one before, whatever vLLM wrote meanwhile.
    starting = [s for s in run.notify.statuses() if s.startswith("starting vLLM:")]
    assert 1 <= len(starting) <= math.floor(float(ready["elapsed_s"])) + 1, starting
    assert all(re.fullmatch(r"starting vLLM: .+ \(\d+ s\)", text) for text in starting)
    assert run.notify.statuses()[-1] == f"ready: {ready['summary'].rsplit(' after ', 1)[0]}"
    assert stop(run) == 0
    assert_nothing_left(run)
