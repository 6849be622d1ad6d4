"""Does each adapter change the model's output? One tiny deterministic completion as the base
model and one as each adapter, and their top log-probabilities compared.

An adapter vLLM loads can still serve exactly the base model: an all-zero `lora_B` (what PEFT
writes before training), target modules vLLM excludes or does not map (a `language_model.`
prefix). Listing it in /v1/models proves none of that; its first token's log-probabilities do.

The request: `POST /v1/completions` with a fixed prompt, `temperature: 0`, `max_tokens: 1`,
`logprobs: TOP_LOGPROBS` and a fixed seed. The base model is asked once per round and its answer
reused for every adapter; requests go one at a time, so base and adapter run in batches of the
same shape.

The tolerance (`TOLERANCE`, nats): an adapter has no effect when its top tokens are the base's
and no log-probability differs by more than this. The error that matters is a false "no
effect" (under `lora.verify: strict` it stops serving); a missed no-op only leaves things as
they were before this check. So the tolerance sits at numerical noise, far below any trained
adapter's effect: a zero-B adapter adds exact zeros, and on the CPU build served the base's
log-probabilities to the last digit, while the demo adapters move them by up to 94 nats. 1e-3
nats (a 0.1% change of a token's probability) is a hundred times float32's rounding of a
log-softmax, and far below bfloat16's batch noise on a GPU (hundredths of a nat when other
requests share the batch): there a no-op may read as "effect" (missed, the lesser harm),
never the other way.

Every answer is hostile until read: the body is read up to `MAX_BODY` bytes, at most
`MAX_ENTRIES` top entries are kept, and anything else (a status, a timeout, a body that is not
the expected JSON) is a `failed` verdict with one line of reason, never an exception.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from niodoo_supervisor.launch.render import REDACTED
from niodoo_supervisor.supervise.adapter_api import error_reason

__all__ = [
    "MAX_BODY",
    "MAX_ENTRIES",
    "PROBE_TIMEOUT",
    "PROMPT",
    "TOLERANCE",
    "TOP_LOGPROBS",
    "Effect",
    "EffectProbe",
    "TopLogprobs",
    "Verdict",
    "compare",
    "parse_top_logprobs",
    "probe_timeout",
    "read_capped",
]

PROMPT = "The quick brown fox jumps over the lazy"
TOP_LOGPROBS = 5  # vLLM's --max-logprobs defaults to 20
SEED = 0
TOLERANCE = 1e-3  # nats; see the module's docstring
MAX_BODY = 64 * 1024  # a one-token answer with 5 log-probabilities is about 1 KiB
MAX_ENTRIES = TOP_LOGPROBS + 1  # vLLM adds the sampled token when it is not among the top
MAX_TOKEN_CHARS = 40  # of a token as shown in the evidence
# One token on a busy GPU can wait behind a batch, and on a CPU shared with other work take
# tens of seconds (the first request after vLLM's start is the slowest); a stop abandons the
# wait (the callers) and systemd's watchdog is fed meanwhile, so a generous floor costs
# nothing. supervisor.health.timeout (seconds, for /health) raises it, never lowers it.
PROBE_TIMEOUT = 60.0


def probe_timeout(health_timeout: float) -> float:
    """One effect request's limit: supervisor.health.timeout, at least PROBE_TIMEOUT."""
    return max(health_timeout, PROBE_TIMEOUT)


class Verdict(enum.Enum):
    EFFECT = "effect"
    NO_EFFECT = "no_effect"
    FAILED = "failed"


@dataclass(frozen=True)
class TopLogprobs:
    """The first token's top log-probabilities, highest first."""

    entries: tuple[tuple[str, float], ...]

    def as_dict(self) -> dict[str, float]:
        return {_shown(token): round(value, 6) for token, value in self.entries}


@dataclass(frozen=True)
class Effect:
    """One adapter's verdict; `base` and `adapter` are the evidence (None when not read),
    `largest_delta` the largest |difference| over the tokens both have (nats)."""

    adapter: str
    verdict: Verdict
    reason: str
    largest_delta: float | None = None
    base: TopLogprobs | None = None
    seen: TopLogprobs | None = None
    status: int | None = None  # the failed request's HTTP status
    timed_out: bool = False  # failed: no answer within the probe's timeout

    def evidence(self) -> dict[str, object]:
        """For the log line and the status: what was compared and how far apart."""
        shown: dict[str, object] = {"verdict": self.verdict.value, "reason": self.reason}
        if self.largest_delta is not None:
            shown["largest_delta"] = round(self.largest_delta, 6)
        if self.base is not None:
            shown["base_top"] = self.base.as_dict()
        if self.seen is not None:
            shown["adapter_top"] = self.seen.as_dict()
        if self.status is not None:
            shown["status"] = self.status
        return shown


@dataclass(frozen=True)
class _Failure:
    reason: str
    status: int | None = None
    timed_out: bool = False


def compare(
    adapter: str, base: TopLogprobs, seen: TopLogprobs, tolerance: float = TOLERANCE
) -> Effect:
    """`effect` unless the top tokens are the same and every log-probability is within
    `tolerance` of the base's."""
    base_values, seen_values = dict(base.entries), dict(seen.entries)
    common = base_values.keys() & seen_values.keys()
    largest = max((abs(base_values[t] - seen_values[t]) for t in common), default=None)
    if base_values.keys() != seen_values.keys():
        only = sorted(seen_values.keys() - base_values.keys())
        reason = f"top tokens differ from the base model's (new: {', '.join(map(_shown, only))})"
        return Effect(adapter, Verdict.EFFECT, reason, largest, base, seen)
    assert largest is not None  # the same non-empty token set
    if largest > tolerance:
        reason = f"log-probabilities differ from the base model's by up to {largest:.4g} nats"
        return Effect(adapter, Verdict.EFFECT, reason, largest, base, seen)
    reason = (
        f"served the base model's output: the same top {len(base.entries)} tokens, "
        f"log-probabilities within {largest:.2g} nats (tolerance {tolerance:g})"
    )
    return Effect(adapter, Verdict.NO_EFFECT, reason, largest, base, seen)


def parse_top_logprobs(body: bytes) -> TopLogprobs | str:
    """The first token's top log-probabilities from a /v1/completions answer, or why the
    answer is not one."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return "the answer is not JSON"
    choices = payload.get("choices") if isinstance(payload, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    top = tops[0] if isinstance(tops, list) and tops else None
    if not isinstance(top, dict) or not top:
        return "the answer has no choices[0].logprobs.top_logprobs[0]"
    entries: list[tuple[str, float]] = []
    for token, value in top.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"top log-probability of {_shown(token)!r} is not a number"
        if not math.isfinite(value) or value > 0:
            return f"top log-probability of {_shown(token)!r} is {value!r}, not a log-probability"
        entries.append((token, float(value)))
    entries.sort(key=lambda entry: entry[1], reverse=True)
    return TopLogprobs(tuple(entries[:MAX_ENTRIES]))


class EffectProbe:
    """Asks one vLLM. `client` is a `probes.vllm_client` (its base URL and API key); `secrets`
    are kept out of every reason."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        served: str,
        *,
        timeout: float = PROBE_TIMEOUT,
        secrets: Sequence[str] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.served = served
        self.timeout = timeout
        self.secrets = tuple(secret for secret in secrets if secret)
        self.monotonic = monotonic
        self.last_duration: float | None = None  # seconds of the last round
        self.last_cost: float | None = None  # seconds of the last round, per request

    def budget(self, adapters: int) -> float:
        """The longest one round over `adapters` takes (each request at its timeout)."""
        return self.timeout * (adapters + 1)

    async def probe(self, adapters: Sequence[str]) -> list[Effect]:
        """One round: the base model once, then each adapter, one at a time."""
        started = self.monotonic()
        base = await self._ask(self.served)
        effects: list[Effect] = []
        for name in adapters:
            if isinstance(base, _Failure):
                why = f"the base model's request failed: {base.reason}"
                effects.append(_failed(name, why, base))
                continue
            seen = await self._ask(name)
            if isinstance(seen, _Failure):
                effects.append(_failed(name, seen.reason, seen))
            else:
                effects.append(compare(name, base, seen))
        self.last_duration = self.monotonic() - started
        self.last_cost = self.last_duration / (len(adapters) + 1)
        return effects

    async def _ask(self, model: str) -> TopLogprobs | _Failure:
        body = {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": TOP_LOGPROBS,
            "seed": SEED,
        }
        try:
            async with self.client.stream(
                "POST", "/v1/completions", json=body, timeout=self.timeout
            ) as response:
                data = await read_capped(response)
        except httpx.TimeoutException:
            return _Failure(f"no answer within {self.timeout:g}s", timed_out=True)
        except httpx.HTTPError as exc:
            return _Failure(self._redact((str(exc) or type(exc).__name__).splitlines()[0]))
        if data is None:
            return _Failure(f"the answer is larger than {MAX_BODY} bytes", response.status_code)
        if response.status_code != 200:
            reason = _one_line(error_reason(response.status_code, data))
            return _Failure(reason, response.status_code)
        parsed = parse_top_logprobs(data)
        return _Failure(parsed, 200) if isinstance(parsed, str) else parsed

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def _failed(adapter: str, reason: str, failure: _Failure) -> Effect:
    return Effect(
        adapter, Verdict.FAILED, reason, status=failure.status, timed_out=failure.timed_out
    )


async def read_capped(response: httpx.Response) -> bytes | None:
    """The body, or None when it exceeds MAX_BODY (the rest is never read)."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > MAX_BODY:
            return None
    return bytes(data)


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]


def _shown(token: str) -> str:
    printable = "".join(c if c.isprintable() else "?" for c in token)
    return printable if len(printable) <= MAX_TOKEN_CHARS else printable[:MAX_TOKEN_CHARS] + "…"
