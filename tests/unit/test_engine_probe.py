"""A `dp` head asks each data-parallel engine (supervise/engine_probe.py): who is asked, what
is sent, which answers fail the check and how the reason names the engine. Against an
httpx.MockTransport answering as vLLM 0.32 does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import structlog
import structlog.testing
import yaml

from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.launch.topology import host_role
from niodoo_supervisor.supervise.engine_probe import (
    CONCURRENCY,
    PROMPT,
    RANK_HEADER,
    EngineProbe,
    engines_of,
)
from niodoo_supervisor.supervise.probes import CheckResult, HttpProber, prober_for, vllm_client
from role_configs import config_of, rank_of

Handler = Callable[[httpx.Request], httpx.Response]
AsyncHandler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
MODELS = {"object": "list", "data": [{"id": "tiny", "parent": None}]}


def dp_config(tmp: Path, rank: int, dp: int = 2, **topology: Any) -> Config:
    engine = {"data_parallel_size": dp}
    return rank_of(tmp, "dp", rank, engine=engine, **{"head_address": "127.0.0.1", **topology})


def completion(request: httpx.Request) -> httpx.Response:
    choice = {"index": 0, "text": ",", "finish_reason": "length"}
    return httpx.Response(200, json={"object": "text_completion", "choices": [choice]})


def hanging(rank: str) -> Handler:
    """vLLM with the engine `rank` gone: its requests never get an answer (a timeout)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get(RANK_HEADER) == rank:
            raise httpx.ReadTimeout("timed out", request=request)
        return completion(request)

    return handler


def ask(
    handler: Handler | AsyncHandler, ranks: range = range(2), local: int = 1, timeout: float = 5
) -> tuple[float, str, bool]:
    async def main() -> tuple[float, str, bool]:
        async with vllm_client("http://vllm", "sekrit", 5.0, httpx.MockTransport(handler)) as c:
            probe = EngineProbe(
                c,
                served="tiny",
                ranks=ranks,
                timeout=timeout,
                secrets=("sekrit",),
                ranks_per_node=local,
            )
            return await probe.check()

    return asyncio.run(main())


# --- who is asked --------------------------------------------------------------------------------


def test_only_a_dp_head_asks_its_engines_every_rank_of_the_data_parallel_size(
    tmp_path: Path,
) -> None:
    client = httpx.AsyncClient()
    head = dp_config(tmp_path, 0, dp=4)
    probe = engines_of(head, host_role(head, {}), client, ())
    assert probe is not None and probe.ranks == (0, 1, 2, 3) and probe.ranks_per_node == 2
    headless = dp_config(tmp_path, 1)
    assert engines_of(headless, host_role(headless, {}), client, ()) is None
    single = config_of(tmp_path)
    assert engines_of(single, host_role(single, {}), client, ()) is None
    mp_head = rank_of(tmp_path, "mp", 0)
    assert engines_of(mp_head, host_role(mp_head, {}), client, ()) is None


def test_the_engines_get_topology_engine_timeout_and_check_engines_false_turns_them_off(
    tmp_path: Path,
) -> None:
    client = httpx.AsyncClient()
    head = dp_config(tmp_path, 0)
    assert head.supervisor.health.timeout == 5  # /health's limit is not the engines'
    probe = engines_of(head, host_role(head, {}), client, ())
    assert probe is not None and probe.timeout == 60  # a busy GPU's batch goes first
    quick = dp_config(tmp_path, 0, engine_timeout=3)
    probe = engines_of(quick, host_role(quick, {}), client, ())
    assert probe is not None and probe.timeout == 3
    off = dp_config(tmp_path, 0, check_engines=False)
    assert engines_of(off, host_role(off, {}), client, ()) is None


def test_an_engine_timeout_out_of_range_is_one_problem_naming_the_key(tmp_path: Path) -> None:
    for bad in (0, -1, 3601, True):
        path = tmp_path / "niodoo.yaml"
        document = {
            "server": {"python": "python3", "launcher": "serve"},
            "model": {"path": str(tmp_path / "model")},
            "topology": {"engine_timeout": bad},
        }
        path.write_text(yaml.safe_dump(document))
        config, problems = load_config(path, {})
        assert config is None and len(problems) == 1, bad
        assert "topology.engine_timeout" in problems[0].format()


def test_prober_for_a_dp_head_carries_the_engine_probe(tmp_path: Path) -> None:
    head = dp_config(tmp_path, 0)
    prober = prober_for(head, "sekrit", role=host_role(head, {}))
    assert isinstance(prober, HttpProber) and prober.engines is not None
    assert prober.engines.client is prober.client  # the same session, API key included
    single = config_of(tmp_path)
    plain = prober_for(single, None)
    assert isinstance(plain, HttpProber) and plain.engines is None


# --- what is sent --------------------------------------------------------------------------------


def test_each_engine_gets_one_token_pinned_by_the_rank_header_with_the_api_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return completion(request)

    _, reason, timed_out = ask(handler, range(3))
    assert (reason, timed_out) == ("", False)
    assert sorted(request.headers[RANK_HEADER] for request in seen) == ["0", "1", "2"]
    for request in seen:
        assert request.method == "POST" and request.url.path == "/v1/completions"
        assert request.headers["Authorization"] == "Bearer sekrit"
        body = json.loads(request.content)
        assert body == {"model": "tiny", "prompt": PROMPT, "max_tokens": 1, "temperature": 0}


# --- which answers fail --------------------------------------------------------------------------


def test_an_engine_that_does_not_answer_fails_the_check_naming_its_rank_and_node() -> None:
    _, reason, timed_out = ask(hanging("1"))
    assert reason == "engine 1 (rank 1, node 1) did not answer in 5 s"
    assert timed_out
    _, reason, _ = ask(hanging("3"), range(4), local=2)
    assert reason == "engine 3 (rank 3, node 1) did not answer in 5 s"


def test_an_engine_answering_an_error_fails_with_vllms_message_without_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers[RANK_HEADER] == "0":
            return completion(request)
        error = {"message": "engine dead, key sekrit", "type": "InternalServerError"}
        return httpx.Response(500, json={"error": error})

    _, reason, timed_out = ask(handler)
    assert reason == "engine 1 (rank 1, node 1) answered HTTP 500: engine dead, key <redacted>"
    assert not timed_out


def test_an_unbounded_answer_is_not_read_whole_and_the_engine_answered() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * (1024 * 1024))

    assert ask(handler, range(1))[1:] == ("", False)


def test_a_body_that_drips_is_bounded_as_a_whole_and_reported_as_a_time_out() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        async def drip() -> AsyncIterator[bytes]:
            for _ in range(20):  # 6 s in all, each byte well within the timeout
                await asyncio.sleep(0.3)
                yield b" "

        return httpx.Response(200, content=drip())

    _, reason, timed_out = ask(handler, range(1), timeout=0.5)
    assert reason == "engine 0 (rank 0, node 0) did not answer in 0.5 s" and timed_out


def test_engines_are_asked_in_turns_each_deadline_from_its_own_send() -> None:
    in_flight, most = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return completion(request)

    # 120 engines at 0.2 s each, 16 at a time, take 1.6 s: far past one 0.5 s timeout.
    assert ask(handler, range(120), timeout=0.5)[1:] == ("", False)
    assert most == CONCURRENCY


def test_no_free_connection_blames_no_engine() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection free", request=request)

    assert ask(handler)[1:] == ("", False)


def test_a_4xx_turns_the_engine_checks_off_with_one_warning_and_no_more_asks() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers[RANK_HEADER])
        if request.headers[RANK_HEADER] == "0":
            return completion(request)
        message = "data_parallel_rank 1 is out of range [0, 1)."
        return httpx.Response(400, json={"error": {"message": message, "type": "BadRequest"}})

    async def main() -> list[tuple[float, str, bool]]:
        async with vllm_client("http://vllm", None, 5.0, httpx.MockTransport(handler)) as c:
            probe = EngineProbe(c, served="tiny", ranks=range(2), timeout=5)
            return [await probe.check() for _ in range(3)]

    with structlog.testing.capture_logs() as records:
        results = asyncio.run(main())
    assert [result[1:] for result in results] == [("", False)] * 3
    assert sorted(asked) == ["0", "1"]  # the first check only
    off = [record for record in records if record["event"] == "engine_checks_off"]
    assert len(off) == 1 and off[0]["log_level"] == "warning"
    assert off[0]["reason"] == (
        "engine 1 (rank 1, node 1) answered HTTP 400: data_parallel_rank 1 is out of range [0, 1)."
    )


def test_a_refused_connection_fails_every_engine() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    _, reason, timed_out = ask(handler)
    assert reason.count("connection refused") == 2 and not timed_out


# --- when: liveness checks only, after the first passing check ------------------------------------


def check_twice(handler: Handler, tmp: Path) -> tuple[CheckResult, CheckResult, list[str]]:
    asked: list[str] = []

    def vllm(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        asked.append(request.headers[RANK_HEADER])
        return handler(request)

    async def main() -> tuple[CheckResult, CheckResult]:
        head = dp_config(tmp, 0)
        prober = HttpProber(
            "http://vllm",
            served="tiny",
            adapters=[],
            api_key=None,
            timeout=5,
            transport=httpx.MockTransport(vllm),
        )
        prober.engines = engines_of(head, host_role(head, {}), prober.client, ())
        async with prober.client:
            first = await prober.check()
            return first, await prober.check()

    first, second = asyncio.run(main())
    return first, second, asked


def test_the_check_that_makes_the_head_ready_does_not_ask_the_engines(tmp_path: Path) -> None:
    first, second, asked = check_twice(hanging("1"), tmp_path)
    assert first.ok and first.engines is None  # readiness: /health and /v1/models only
    assert sorted(asked) == ["0", "1"]  # asked from the second check on
    assert not second.ok and second.timed_out
    assert second.reason == "engine 1 (rank 1, node 1) did not answer in 60 s"


def test_engines_that_answer_pass_the_check(tmp_path: Path) -> None:
    _, second, _ = check_twice(completion, tmp_path)
    assert second.ok and second.engines is not None and second.reason == "ok"
