"""What `status` and /metrics show of the GPUs: the `gpus:` lines (a start waiting for memory,
each GPU's memory and vLLM's processes) and the `niodoo_gpu_*` gauges, from status.json's
`gpus` and `gpu_wait`, whatever shape a damaged file gives them."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from niodoo_supervisor.cli.gpu_view import gpu_lines
from niodoo_supervisor.cli.status_view import human
from niodoo_supervisor.control.gpu_metrics import GpuCollector

NOW = 1_700_000_000.0
GPU = {
    "index": 0,
    "uuid": "GPU-0",
    "name": "NVIDIA A10",
    "used_mib": 20992,
    "total_mib": 24576,
    "session_processes": [{"pid": 4100, "mib": 20480}, {"pid": 4101, "mib": None}],
}


def test_each_gpu_shows_its_memory_and_vllm_processes() -> None:
    idle = {**GPU, "index": 1, "used_mib": 0, "session_processes": []}
    assert gpu_lines({"gpus": [GPU, idle]}, NOW) == [
        "gpus:      GPU 0 (NVIDIA A10): 20.5 of 24.0 GiB used; vLLM: pid 4100 (20.0 GiB), pid 4101",
        "           GPU 1 (NVIDIA A10): 0.0 of 24.0 GiB used; no vLLM process on it",
    ]


def test_a_wait_for_memory_comes_first_with_since_when() -> None:
    wait = {"since": NOW - 300, "reason": "waiting for GPU memory: GPU 0 has 3.1 of 24 GiB free"}
    lines = gpu_lines({"gpu_wait": wait, "gpus": [GPU]}, NOW)
    assert lines[0].startswith("gpus:      waiting for GPU memory: GPU 0 has 3.1 of 24 GiB free")
    assert "5 min ago" in lines[0]
    assert lines[1].startswith("           GPU 0 (NVIDIA A10)")


def test_no_nvml_no_line_and_the_status_shows_it_after_vllm() -> None:
    assert gpu_lines({"gpus": []}, NOW) == []
    lines = human({"state": "READY", "gpus": [GPU]}, True, NOW)
    vllm = next(i for i, line in enumerate(lines) if line.startswith("vLLM:"))
    assert lines[vllm + 1].startswith("gpus:      GPU 0 (NVIDIA A10)")


def test_damaged_values_are_shown_not_raised() -> None:
    status: dict[str, Any] = {
        "gpus": [7, {"index": "x", "name": "\x1b[31mred", "session_processes": "nope"}],
        "gpu_wait": {"since": "yesterday", "reason": 5},
    }
    assert gpu_lines(status, NOW) == [
        "gpus:      5",
        "           GPU ? (?): memory unknown; no vLLM process on it",
        "           GPU ? (\\x1b[31mred): memory unknown; no vLLM process on it",
    ]


def test_the_gauges_follow_the_board() -> None:
    board: list[dict[str, Any]] = []
    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: board))
    assert b"niodoo_gpu_memory_used_bytes{" not in generate_latest(registry)
    board.append(GPU)
    samples = {
        (sample.name, sample.labels["gpu"]): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert samples == {
        ("niodoo_gpu_memory_used_bytes", "0"): 20992 * 2**20,
        ("niodoo_gpu_memory_total_bytes", "0"): 24576 * 2**20,
        ("niodoo_gpu_session_processes", "0"): 2,
    }
