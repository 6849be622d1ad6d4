"""The GPU metrics (`niodoo_gpu_*`), read at scrape time off what the status board holds of
NVML (`gpus`, written by `supervise/gpu_memory.py`): per GPU its memory used and total and
how many of vLLM's processes it holds. No samples without NVML."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["GpuCollector"]

MIB = 1 << 20


class GpuCollector(Collector):
    def __init__(self, gpus: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self.gpus = gpus

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "niodoo_gpu_memory_used_bytes", "GPU memory in use, as NVML last reported it.",
            labels=["gpu"],
        )  # fmt: skip
        total = GaugeMetricFamily(
            "niodoo_gpu_memory_total_bytes", "GPU memory in all, as NVML reports it.",
            labels=["gpu"],
        )  # fmt: skip
        session = GaugeMetricFamily(
            "niodoo_gpu_session_processes",
            "Processes of the supervised vLLM that NVML lists on the GPU.",
            labels=["gpu"],
        )
        for gpu in self.gpus():
            label = [str(gpu.get("index"))]
            used.add_metric(label, float(gpu.get("used_mib") or 0) * MIB)
            total.add_metric(label, float(gpu.get("total_mib") or 0) * MIB)
            session.add_metric(label, float(len(gpu.get("session_processes") or ())))
        yield used
        yield total
        yield session
