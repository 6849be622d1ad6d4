"""AdapterEffects on its own: what a failed readiness round puts in the check it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx

from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.supervise.adapter_effects import AdapterEffects
from niodoo_supervisor.supervise.effect_probe import EffectProbe
from niodoo_supervisor.supervise.probes import CheckResult, ProbeResult, vllm_client
from niodoo_supervisor.supervise.status_file import StatusBoard


class TickingClock:
    """Each reading 7 s after the last."""

    def __init__(self) -> None:
        self.ticks: Iterator[float] = iter(range(0, 10_000, 7))

    def monotonic(self) -> float:
        return float(next(self.ticks))

    def wall(self) -> float:
        return 1_700_000_000.0


def test_a_failed_round_reports_its_own_time_and_a_timeout_as_such() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out")

    async def main() -> CheckResult:
        client = vllm_client("http://vllm", None, 60.0, httpx.MockTransport(handler))
        clock = TickingClock()
        async with client:
            effects = AdapterEffects(
                EffectProbe(client, "tiny", monotonic=clock.monotonic),
                lambda: "warn",
                lambda: ["a"],
                status=StatusBoard(),
                counters=EventCounters(),
                clock=clock,
                stop_asked=asyncio.Event(),
            )
            listed = CheckResult(
                ProbeResult(True, 200, 0.001), ProbeResult(True, 200, 0.002, "listed")
            )
            return await effects.at_readiness(listed, ["a"])

    result = asyncio.run(main())
    assert result.effect is not None and not result.ok
    assert result.effect.latency == 7.0  # the round's, not /v1/models' 0.002 s
    assert result.effect.timed_out and result.timed_out
