"""Does each data-parallel engine answer? The head of a `dp` topology asks every engine itself.

vLLM's head keeps `/health` at 200 when a headless host's engine dies, and the requests its
load balancer routes to that engine hang; the relaunched engine cannot rejoin until the head
restarts, as the head accepts engines' handshakes only while it starts. So the head's liveness
check also sends each engine one tiny completion, pinned to it with vLLM's
`X-data-parallel-rank` header (`vllm/entrypoints/generate/base/serving.py`,
`_get_data_parallel_rank`): an engine that does not answer within `supervisor.health.timeout`,
or answers with an error, fails the check, naming its rank; `failure_threshold` failures in a
row restart the head, and the relaunched engine joins it as it starts.

When: every liveness check once the head has been ready (the prober's first passing check
arms it), never while vLLM starts (its `/health` turns 200 only after every engine's
handshake, and a first completion there would only slow readiness). The engines are asked
at once, so a check waits at most one timeout however many engines hang. Each request is a
normal completion (`max_tokens: 1`, `temperature: 0`, a fixed prompt), counted in vLLM's
request metrics like any client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.render import REDACTED
from niodoo_supervisor.launch.topology import HostRole, Role
from niodoo_supervisor.launch.topology_render import data_parallel_size_local
from niodoo_supervisor.supervise.adapter_api import error_reason
from niodoo_supervisor.supervise.effect_probe import MAX_BODY, read_capped

__all__ = ["PROMPT", "RANK_HEADER", "EngineAnswer", "EngineProbe", "engines_of"]

RANK_HEADER = "X-data-parallel-rank"  # vLLM's name; it routes the request to that engine
PROMPT = "Hello"


@dataclass(frozen=True)
class EngineAnswer:
    """One engine's answer: `reason` is empty when it answered 200."""

    rank: int
    latency: float
    status: int | None = None
    reason: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.reason


def engines_of(
    config: Config, role: HostRole, client: httpx.AsyncClient, secrets: Sequence[str]
) -> EngineProbe | None:
    """The probe of every data-parallel engine, on a `dp` head only (None elsewhere)."""
    if role.backend != "dp" or role.role is not Role.HEAD:
        return None
    return EngineProbe(
        client,
        served=config.served_name,
        ranks=range(config.engine.data_parallel_size or 1),
        timeout=config.supervisor.health.timeout,
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
    ) -> None:
        self.client = client
        self.served = served
        self.ranks = tuple(ranks)
        self.timeout = timeout
        self.secrets = tuple(secrets)
        self.ranks_per_node = max(ranks_per_node, 1)

    async def check(self) -> tuple[float, str, bool]:
        """(the slowest engine's latency, why the check failed or "", whether one timed out)."""
        answers = await asyncio.gather(*(self.ask(rank) for rank in self.ranks))
        failed = [answer for answer in answers if not answer.ok]
        latency = max((answer.latency for answer in answers), default=0.0)
        reason = "; ".join(self.describe(answer) for answer in failed)
        return latency, reason, any(answer.timed_out for answer in failed)

    def describe(self, answer: EngineAnswer) -> str:
        node = answer.rank // self.ranks_per_node
        return f"engine {answer.rank} (rank {answer.rank}, node {node}) {answer.reason}"

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
        except httpx.TimeoutException:
            return EngineAnswer(
                rank,
                time.monotonic() - started,
                reason=f"did not answer in {self.timeout:g} s",
                timed_out=True,
            )
        except httpx.HTTPError as exc:
            text = (str(exc) or type(exc).__name__).splitlines()[0]
            return EngineAnswer(rank, time.monotonic() - started, reason=self._redact(text))
        latency = time.monotonic() - started
        if data is None:
            return EngineAnswer(
                rank, latency, response.status_code, f"answered more than {MAX_BODY} bytes"
            )
        if response.status_code != 200:
            lines = error_reason(response.status_code, data).strip().splitlines() or [""]
            return EngineAnswer(
                rank, latency, response.status_code, self._redact(f"answered {lines[0][:200]}")
            )
        return EngineAnswer(rank, latency, 200)

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
