"""The effect probe (lora.verify) against an httpx.MockTransport answering as vLLM 0.32's
/v1/completions does: the comparison, and every hostile answer as a `failed` verdict with one
line of reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from niodoo_supervisor.supervise.effect_probe import (
    MAX_BODY,
    MAX_ENTRIES,
    PROBE_TIMEOUT,
    PROMPT,
    TOLERANCE,
    TOP_LOGPROBS,
    Effect,
    EffectProbe,
    TopLogprobs,
    Verdict,
    compare,
    parse_top_logprobs,
    probe_timeout,
)
from niodoo_supervisor.supervise.probes import vllm_client

BASE = {"Hello": -0.5, "Hi": -1.25, "The": -2.0, "A": -3.5, "We": -4.0}


def completion(top: dict[str, float] | None) -> httpx.Response:
    """vLLM 0.32's answer with `logprobs` (trimmed to what the probe reads)."""
    logprobs = None if top is None else {
        "text_offset": [0], "token_logprobs": [max(top.values())],
        "tokens": [max(top, key=lambda t: top[t])], "top_logprobs": [top],
    }  # fmt: skip
    choice = {"index": 0, "text": "x", "logprobs": logprobs, "finish_reason": "length"}
    return httpx.Response(200, json={"object": "text_completion", "choices": [choice]})


def shifted(top: dict[str, float], by: float) -> dict[str, float]:
    return {token: value - by for token, value in top.items()}


Handler = Callable[[httpx.Request], httpx.Response]


def run_probe(handler: Handler, adapters: list[str], timeout: float = 5.0) -> list[Effect]:
    async def main() -> list[Effect]:
        client = vllm_client("http://vllm", "sekrit", 60.0, httpx.MockTransport(handler))
        async with client:
            probe = EffectProbe(client, "tiny", timeout=timeout, secrets=("sekrit",))
            return list(await probe.probe(adapters))

    return asyncio.run(main())


def by_model(answers: dict[str, Handler]) -> tuple[Handler, list[dict[str, object]]]:
    asked: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        return answers[body["model"]](request)

    return handler, asked


# --- the comparison ---------------------------------------------------------------------------


def top(values: dict[str, float]) -> TopLogprobs:
    parsed = parse_top_logprobs(completion(values).content)
    assert isinstance(parsed, TopLogprobs)
    return parsed


def test_identical_logprobs_are_no_effect_with_the_evidence() -> None:
    effect = compare("untrained", top(BASE), top(BASE))
    assert effect.verdict is Verdict.NO_EFFECT
    assert effect.largest_delta == 0.0
    evidence = effect.evidence()
    assert evidence["base_top"] == evidence["adapter_top"] == BASE
    assert "served the base model's output" in effect.reason


def test_differences_within_the_tolerance_are_no_effect() -> None:
    effect = compare("a", top(BASE), top(shifted(BASE, TOLERANCE / 2)))
    assert effect.verdict is Verdict.NO_EFFECT


def test_a_difference_beyond_the_tolerance_is_an_effect() -> None:
    moved = dict(BASE, A=BASE["A"] - TOLERANCE * 2)
    effect = compare("a", top(BASE), top(moved))
    assert effect.verdict is Verdict.EFFECT
    assert effect.largest_delta == pytest.approx(TOLERANCE * 2)


def test_other_top_tokens_are_an_effect_even_with_equal_values() -> None:
    other = {("Howdy" if t == "We" else t): v for t, v in BASE.items()}
    effect = compare("a", top(BASE), top(other))
    assert effect.verdict is Verdict.EFFECT
    assert "Howdy" in effect.reason and effect.largest_delta == 0.0


def test_the_demo_adapters_94_nats_are_an_effect() -> None:
    assert compare("alpha", top(BASE), top(shifted(BASE, 94.0))).verdict is Verdict.EFFECT


# --- the requests -----------------------------------------------------------------------------


def test_the_base_model_is_asked_once_and_each_adapter_once_deterministically() -> None:
    handler, asked = by_model(
        {
            "tiny": lambda r: completion(BASE),
            "alpha": lambda r: completion(shifted(BASE, 3.0)),
            "untrained": lambda r: completion(BASE),
        }
    )
    effects = run_probe(handler, ["alpha", "untrained"])
    assert [body["model"] for body in asked] == ["tiny", "alpha", "untrained"]
    for body in asked:
        assert body["prompt"] == PROMPT and body["temperature"] == 0 and body["max_tokens"] == 1
        assert body["logprobs"] == TOP_LOGPROBS and isinstance(body["seed"], int)
    assert [e.verdict for e in effects] == [Verdict.EFFECT, Verdict.NO_EFFECT]


def test_the_api_key_is_sent() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return completion(BASE)

    run_probe(handler, ["a"])
    assert seen == ["Bearer sekrit", "Bearer sekrit"]


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": "x", "param": None, "code": status}}
    )


def _raise(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


HOSTILE: dict[str, tuple[Handler, str]] = {
    "a 404 of vLLM": (
        lambda r: _error(404, "The model `a` does not exist."),
        "HTTP 404: The model `a` does not exist.",
    ),
    "a 500 with a text body": (
        lambda r: httpx.Response(500, text="Internal Server Error\nTraceback ..."),
        "HTTP 500: Internal Server Error",
    ),
    "a 503 without a body": (lambda r: httpx.Response(503), "HTTP 503: no body"),
    "not JSON": (lambda r: httpx.Response(200, text="<html>"), "the answer is not JSON"),
    "a JSON list": (
        lambda r: httpx.Response(200, json=[1, 2]),
        "the answer has no choices[0].logprobs.top_logprobs[0]",
    ),
    "no logprobs": (
        lambda r: completion(None),
        "the answer has no choices[0].logprobs.top_logprobs[0]",
    ),
    "a string log-probability": (
        lambda r: completion({"x": "-1"}),  # type: ignore[dict-item]
        "top log-probability of 'x' is not a number",
    ),
    "a positive log-probability": (
        lambda r: completion({"x": 2.0}),
        "top log-probability of 'x' is 2.0, not a log-probability",
    ),
    "NaN": (
        lambda r: httpx.Response(
            200,
            content=b'{"choices":[{"logprobs":{"top_logprobs":[{"x":NaN}]}}]}',
        ),
        "top log-probability of 'x' is nan, not a log-probability",
    ),
    "deep nesting": (
        lambda r: httpx.Response(200, content=b"[" * 50_000),
        "the answer is not JSON",
    ),
    "a body too large": (
        lambda r: httpx.Response(200, content=b" " * (MAX_BODY + 1)),
        f"the answer is larger than {MAX_BODY} bytes",
    ),
    "a timeout": (_raise(httpx.ReadTimeout("read timed out")), "no answer within 5s"),
    "a refused connection with the key in its text": (
        _raise(httpx.ConnectError("refused for Bearer sekrit")),
        "refused for Bearer <redacted>",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_adapter_answer_is_a_failed_verdict(case: str) -> None:
    answer, reason = HOSTILE[case]
    handler, _ = by_model({"tiny": lambda r: completion(BASE), "a": answer})
    [effect] = run_probe(handler, ["a"])
    assert effect.verdict is Verdict.FAILED
    assert effect.reason == reason
    assert "sekrit" not in str(effect)


def test_a_failed_base_request_fails_every_adapter() -> None:
    handler, asked = by_model({"tiny": lambda r: httpx.Response(500)})
    effects = run_probe(handler, ["a", "b"])
    assert len(asked) == 1  # the adapters are not asked without a base to compare with
    assert [e.verdict for e in effects] == [Verdict.FAILED, Verdict.FAILED]
    assert all("base model's request failed: HTTP 500" in e.reason for e in effects)


def test_only_the_highest_entries_are_kept() -> None:
    many = {f"t{i}": -float(i) for i in range(1000)}
    parsed = parse_top_logprobs(
        json.dumps({"choices": [{"logprobs": {"top_logprobs": [many]}}]}).encode()
    )
    assert isinstance(parsed, TopLogprobs)
    assert [token for token, _ in parsed.entries] == [f"t{i}" for i in range(MAX_ENTRIES)]


def test_tokens_are_shown_printable_and_short() -> None:
    shown = top({"\x1b[31m" + "y" * 100: -1.0}).as_dict()
    [token] = shown
    assert token.startswith("?[31m") and token.endswith("…") and len(token) <= 41


def test_a_timeout_is_marked_timed_out_in_the_verdict_not_only_in_its_reason() -> None:
    handler, _ = by_model(
        {"tiny": lambda r: completion(BASE), "a": _raise(httpx.ReadTimeout("read timed out"))}
    )
    [effect] = run_probe(handler, ["a"])
    assert effect.timed_out and effect.verdict is Verdict.FAILED
    # A base model that times out fails every adapter as timed out too; an HTTP error does not.
    slow_base, _ = by_model({"tiny": _raise(httpx.ReadTimeout("read timed out"))})
    [effect] = run_probe(slow_base, ["a"])
    assert effect.timed_out
    [effect] = run_probe(by_model({"tiny": lambda r: httpx.Response(500)})[0], ["a"])
    assert not effect.timed_out


def test_the_request_timeout_is_supervisor_health_timeout_at_least_the_floor() -> None:
    assert probe_timeout(5.0) == PROBE_TIMEOUT  # /health's seconds: too short for a first token
    assert probe_timeout(PROBE_TIMEOUT + 30) == PROBE_TIMEOUT + 30


def test_a_round_is_timed_on_the_clock_it_is_given() -> None:
    ticks = iter([100.0, 106.0])  # the round's start and end, on a virtual clock

    async def main() -> EffectProbe:
        answer = lambda r: completion(BASE)  # noqa: E731
        handler, _ = by_model({"tiny": answer, "a": answer, "b": answer})
        client = vllm_client("http://vllm", None, 60.0, httpx.MockTransport(handler))
        async with client:
            probe = EffectProbe(client, "tiny", monotonic=lambda: next(ticks))
            await probe.probe(["a", "b"])
            return probe

    probe = asyncio.run(main())
    assert probe.last_duration == 6.0 and probe.last_cost == 2.0  # three requests
    assert probe.budget(2) == 3 * probe.timeout
