"""Does each data-parallel engine answer? The head of a `dp` topology asks every engine itself.

vLLM's head keeps `/health` at 200 when a headless host's engine dies, and the requests its
load balancer routes to that engine hang; the relaunched engine cannot rejoin until the head
restarts, as the head accepts engines' handshakes only while it starts. So the head's liveness
check also sends each engine one tiny completion, pinned to it with vLLM's
`X-data-parallel-rank` header (`vllm/entrypoints/generate/base/serving.py`,
`_get_data_parallel_rank`): an engine that does not answer within `topology.engine_timeout`
(the whole request, however slowly its body drips), refuses the connection or answers 5xx
fails the check, naming its rank; `failure_threshold` failures in a row restart the head, and
the relaunched engine joins it as it starts. The timeout is generous (60 s by default): on a
busy GPU the token queues behind a full batch, and a restart would kill every request in flight.

A 4xx says the check itself does not fit this vLLM (404: a pooling model has no
/v1/completions; 400: the rank is out of range), not that an engine is dead: one warning
`engine_checks_off` names it, and the engines are not asked again this run (the head's other
checks go on). `topology.check_engines: false` turns the checks off from the start.

When: every liveness check once the head has been ready (the prober's first passing check
arms it), never while vLLM starts (its `/health` turns 200 only after every engine's
handshake, and a first completion there would only slow readiness). Up to `CONCURRENCY`
engines are asked at once (the prober's connection pool holds 100), each one's deadline
starting when its turn comes, so a check waits at most one `engine_timeout` per
`CONCURRENCY` engines. Each request is a normal completion (`max_tokens: 1`,
`temperature: 0`, a fixed prompt), counted in vLLM's request metrics like any client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.render import REDACTED
from niodoo_supervisor.launch.topology import HostRole, Role
from niodoo_supervisor.launch.topology_render import data_parallel_size_local
from niodoo_supervisor.supervise.adapter_api import error_reason
from niodoo_supervisor.supervise.effect_probe import read_capped

__all__ = ["CONCURRENCY", "PROMPT", "RANK_HEADER", "EngineAnswer", "EngineProbe", "engines_of"]

log = structlog.get_logger("niodoo_supervisor")

RANK_HEADER = "X-data-parallel-rank"  # vLLM's name; it routes the request to that engine
PROMPT = "Hello"
# Engines asked at once: well inside the prober's pool of 100 connections, so waiting for a
# connection never eats an engine's time; more engines are asked in turns.
CONCURRENCY = 16


@dataclass(frozen=True)
class EngineAnswer:
    """One engine's answer: `reason` is empty when it answered (or could not be asked)."""

    rank: int
    latency: float
    status: int | None = None
    reason: str = ""
    timed_out: bool = False
    refused: bool = False  # a 4xx: the check does not fit this vLLM, the engine is not blamed

    @property
    def ok(self) -> bool:
        return not self.reason or self.refused


def engines_of(
    config: Config, role: HostRole, client: httpx.AsyncClient, secrets: Sequence[str]
) -> EngineProbe | None:
    """The probe of every data-parallel engine, on a `dp` head with `topology.check_engines`
    on (None elsewhere)."""
    if role.backend != "dp" or role.role is not Role.HEAD or not config.topology.check_engines:
        return None
    return EngineProbe(
        client,
        served=config.served_name,
        ranks=range(config.engine.data_parallel_size or 1),
        timeout=config.topology.engine_timeout,
        secrets=secrets,
        ranks_per_node=data_parallel_size_local(config),
    )


class EngineProbe:
    """Asks each engine of `ranks` through `client` (the prober's, with its API key)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        served: str,
        ranks: Sequence[int],
        timeout: float,
        secrets: Sequence[str] = (),
        ranks_per_node: int = 1,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.client = client
        self.served = served
        self.ranks = tuple(ranks)
        self.timeout = timeout
        self.secrets = tuple(secrets)
        self.ranks_per_node = max(ranks_per_node, 1)
        self.concurrency = max(concurrency, 1)
        self.off = ""  # why the checks are off for this run (a 4xx); empty while they run

    async def check(self) -> tuple[float, str, bool]:
        """(the slowest engine's latency, why the check failed or "", whether one timed out)."""
        if self.off:
            return 0.0, "", False
        turns = asyncio.Semaphore(self.concurrency)
        answers = await asyncio.gather(*(self._in_turn(turns, rank) for rank in self.ranks))
        refused = next((answer for answer in answers if answer.refused), None)
        if refused is not None:
            self.off = self.describe(refused)
            log.warning("engine_checks_off", reason=self.off)
            return refused.latency, "", False
        failed = [answer for answer in answers if not answer.ok]
        latency = max((answer.latency for answer in answers), default=0.0)
        reason = "; ".join(self.describe(answer) for answer in failed)
        return latency, reason, any(answer.timed_out for answer in failed)

    def describe(self, answer: EngineAnswer) -> str:
        node = answer.rank // self.ranks_per_node
        return f"engine {answer.rank} (rank {answer.rank}, node {node}) {answer.reason}"

    async def _in_turn(self, turns: asyncio.Semaphore, rank: int) -> EngineAnswer:
        async with turns:
            started = time.monotonic()
            try:
                # The whole request: httpx's timeout bounds each read, not a body that drips.
                return await asyncio.wait_for(self.ask(rank), self.timeout)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return self._timed_out(rank, started)

    def _timed_out(self, rank: int, started: float) -> EngineAnswer:
        reason = f"did not answer in {self.timeout:g} s"
        return EngineAnswer(rank, time.monotonic() - started, reason=reason, timed_out=True)

    async def ask(self, rank: int) -> EngineAnswer:
        body = {"model": self.served, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
        started = time.monotonic()
        try:
            async with self.client.stream(
                "POST",
                "/v1/completions",
                json=body,
                headers={RANK_HEADER: str(rank)},
                timeout=self.timeout,
            ) as response:
                data = await read_capped(response)
        except httpx.PoolTimeout:
            return EngineAnswer(rank, 0.0)  # no connection free here: says nothing of the engine
        except httpx.TimeoutException:
            return self._timed_out(rank, started)
        except httpx.HTTPError as exc:
            text = (str(exc) or type(exc).__name__).splitlines()[0]
            return EngineAnswer(rank, time.monotonic() - started, reason=self._redact(text))
        latency, status = time.monotonic() - started, response.status_code
        if status < 400:
            return EngineAnswer(rank, latency, status)  # it answered (a long body is not read)
        lines = error_reason(status, data or b"").strip().splitlines() or [""]
        reason = self._redact(f"answered {lines[0][:200]}")
        return EngineAnswer(rank, latency, status, reason, refused=status < 500)

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
