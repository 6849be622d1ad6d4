"""`lora.lora_name_field: reject|route` on the real vLLM: the first user's request (the base
model's name as `model`, `"lora_name": "alpha"`) replayed against the guard middleware vLLM
runs. Two vLLM starts in all, one per mode; `log` (vLLM serves the base model and the
supervisor reports the field) is `test_real_vllm.py`'s ignored-field test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import NotifySocket, start_supervisor, stop_supervisor, wait_for
from niodoo_supervisor.demo.model import DemoModel
from realvllm import port_of, write_demo_config

START_TIMEOUT = 300  # a cold CPU start of vLLM is ~30-40 s here; a loaded CI machine is slower
REPORTED = {"model": "tiny", "lora_name": "alpha"}  # the first user's request


@contextmanager
def _supervised(tmp: Path, vllm_python: str, model: DemoModel, mode: str) -> Iterator[str]:
    """vLLM under the supervisor with `lora_name_field: mode`, ready; yields its URL."""
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, model)
    document = yaml.safe_load(config.read_text())
    document["lora"]["lora_name_field"] = mode
    config.write_text(yaml.safe_dump(document))
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        run.wait_state("READY", START_TIMEOUT)
        yield f"http://127.0.0.1:{port_of(config)}"
    finally:
        stop_supervisor(run)
        notify.close()


def _chat(base_url: str, **fields: Any) -> httpx.Response:
    body = {
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
        **fields,
    }
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120, trust_env=False)


def _answer(response: httpx.Response) -> tuple[str, list[Any]]:
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"], choice["logprobs"]["content"]


def _streamed(base_url: str, **fields: Any) -> str:
    body = {
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        **fields,
    }
    parts: list[str] = []
    events = 0
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, timeout=120, trust_env=False
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events += 1
                delta = json.loads(line[6:])["choices"][0]["delta"]
                parts.append(delta.get("content") or "")
    assert events > 2  # streamed event by event, not one answer
    return "".join(parts)


def _served_requests(base_url: str) -> float:
    """vLLM's count of finished requests (`vllm:request_success_total`, all reasons)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30, trust_env=False).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total")
    )


def _error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "lora_name", 400)
    message: str = error["message"]
    assert "'alpha', 'beta'" in message
    return message


def test_reject_answers_400_and_serves_nothing(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    with _supervised(e2e_tmp / "reject", vllm_python, demo_model, "reject") as url:
        before = _served_requests(url)
        message = _error(_chat(url, **REPORTED))
        assert "`model`" in message
        # vLLM never saw it: once the request served after it is counted, the count has
        # grown by that one alone
        _answer(_chat(url, model="alpha"))
        served = wait_for(
            lambda: _served_requests(url) >= before + 1, 15, "the served request counted"
        )
        assert served and _served_requests(url) == before + 1
        # the supervisor counts the refusal from vLLM's own log
        state_dir = e2e_tmp / "reject" / "state"
        rejected = wait_for(
            lambda: _status_count(state_dir, "lora_name_rejected"), 15, "the rejection counted"
        )
        assert rejected == 1


def test_route_serves_the_named_adapter_streamed_too(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    with _supervised(e2e_tmp / "route", vllm_python, demo_model, "route") as url:
        as_adapter = _answer(_chat(url, model="alpha"))
        assert as_adapter != _answer(_chat(url, model="tiny"))  # alpha does change the answer
        assert _answer(_chat(url, **REPORTED)) == as_adapter
        assert _answer(_chat(url, lora_name="alpha")) == as_adapter  # `model` absent
        assert _streamed(url, **REPORTED) == as_adapter[0]
        message = _error(_chat(url, model="tiny", lora_name="gamma"))
        assert "'gamma'" in message
        state_dir = e2e_tmp / "route" / "state"
        counts = wait_for(
            lambda: (
                _status_count(state_dir, "lora_name_routed") >= 3
                and _status_count(state_dir, "lora_name_rejected") >= 1
                and (
                    _status_count(state_dir, "lora_name_routed"),
                    _status_count(state_dir, "lora_name_rejected"),
                )
            ),
            15,
            "the routed and rejected requests counted",
        )
        assert counts == (3, 1)


def _status_count(state_dir: Path, rule: str) -> int:
    try:
        status = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    rules = status.get("events", {}).get("rules", {})
    return int(rules.get(rule, {}).get("count", 0))


pytestmark = pytest.mark.e2e
