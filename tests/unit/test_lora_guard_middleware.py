"""The `lora_name` guard middleware (it runs inside vLLM) as an ASGI app in front of a fake
downstream app that records the body it received and streams its answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.launch.guard import niodoo_lora_guard
from niodoo_supervisor.launch.guard.niodoo_lora_guard import (
    GUARDED_PATHS,
    MAX_INSPECTED_BYTES,
    SETTINGS_ENV,
    LoraNameGuard,
)
from niodoo_supervisor.launch.lora_guard import LoraGuard, write_guard, write_guard_adapters

Message = MutableMapping[str, Any]
STREAM = (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n")
LOGGER = "vllm.niodoo_lora_guard"


class Downstream:
    """vLLM in the tests: reads the whole body as vLLM does, then streams `STREAM`, noting
    after each part how many messages the client had received by then."""

    def __init__(self) -> None:
        self.calls = 0
        self.scope: MutableMapping[str, Any] = {}
        self.received: list[Message] = []
        self.seen_by_client: list[int] = []
        self.client: list[Message] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        self.scope = scope
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.seen_by_client.append(len(self.client))
        for part in STREAM:
            await send({"type": "http.response.body", "body": part, "more_body": True})
            self.seen_by_client.append(len(self.client))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.received)

    @property
    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = json.loads(self.body)
        return request


def _settings(tmp_path: Path, mode: str, adapters: Sequence[str] = ("alpha", "beta")) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"mode": mode, "served_model": "tiny", "adapters": list(adapters)}))
    return path


def _call(
    guard: LoraNameGuard,
    downstream: Downstream,
    chunks: Sequence[bytes],
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[int, bytes]:
    """Send the request in `chunks`; the answer's status and body."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        downstream.client.append(message)

    asyncio.run(guard(scope, receive, send))
    status = downstream.client[0]["status"]
    return status, b"".join(m.get("body", b"") for m in downstream.client[1:])


def _guard(tmp_path: Path, mode: str) -> tuple[LoraNameGuard, Downstream]:
    downstream = Downstream()
    return LoraNameGuard(downstream, str(_settings(tmp_path, mode))), downstream


def _body(**fields: Any) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def _error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert error["param"] == "lora_name"
    return error


# --- requests without the field pass untouched -------------------------------------------------


@pytest.mark.parametrize("mode", ["reject", "route"])
def test_a_body_without_the_field_reaches_vllm_as_the_same_chunks(
    tmp_path: Path, mode: str
) -> None:
    guard, downstream = _guard(tmp_path, mode)
    chunks = [b'{"model": "tiny", "messages": [{"role": "user", ', b'"content": "hi"}]}']
    status, _ = _call(guard, downstream, chunks)
    assert status == 200
    assert [m["body"] for m in downstream.received] == chunks  # the very chunks, not a copy
    assert all(
        a is b for a, b in zip((m["body"] for m in downstream.received), chunks, strict=True)
    )
    assert downstream.scope["headers"] == []


def test_the_field_inside_a_prompt_is_no_field(tmp_path: Path) -> None:
    guard, downstream = _guard(tmp_path, "reject")
    body = json.dumps({"model": "tiny", "prompt": 'say "lora_name"'}).encode()
    status, _ = _call(guard, downstream, [body], path="/v1/completions")
    assert (status, downstream.body) == (200, body)


def test_an_escaped_key_is_not_looked_for_and_reaches_vllm(tmp_path: Path) -> None:
    # `"\u006cora_name"` is the same key to a JSON parser; no client writes it by mistake.
    guard, downstream = _guard(tmp_path, "reject")
    body = b'{"model": "tiny", "\\u006cora_name": "alpha", "prompt": "x"}'
    status, _ = _call(guard, downstream, [body], path="/v1/completions")
    assert (status, downstream.body) == (200, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/embeddings"),
        ("POST", "/tokenize"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/chat/completions/render"),
    ],
)
def test_other_methods_and_routes_are_not_looked_at(tmp_path: Path, method: str, path: str) -> None:
    guard, downstream = _guard(tmp_path, "reject")
    body = json.dumps({"lora_name": "alpha", "lora_path": "/a"}).encode()
    status, _ = _call(guard, downstream, [body], method=method, path=path)
    assert (status, downstream.body) == (200, body)


def test_the_streamed_answer_passes_part_by_part(tmp_path: Path) -> None:
    guard, downstream = _guard(tmp_path, "route")
    status, body = _call(guard, downstream, [_body(model="tiny", lora_name="alpha", stream=True)])
    assert (status, body) == (200, b"".join(STREAM))
    # each part reached the client before vLLM produced the next one
    assert downstream.seen_by_client == [1, 2, 3, 4]


def test_a_huge_body_without_the_field_passes_in_its_chunks(tmp_path: Path) -> None:
    guard, downstream = _guard(tmp_path, "reject")
    chunks = [b'{"prompt": "', *([b"x" * 65536] * 300), b'", "model": "tiny"}']
    status, _ = _call(guard, downstream, chunks, path="/v1/completions")
    assert status == 200
    assert [m["body"] for m in downstream.received] == chunks


@pytest.mark.parametrize("mode", ["reject", "route"])
def test_a_huge_body_with_the_field_is_refused_unparsed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    guard, downstream = _guard(tmp_path, mode)
    filler = b"x" * (MAX_INSPECTED_BYTES + 1)
    chunks = [b'{"lora_name": "alpha", "prompt": "', filler, b'"}']
    with caplog.at_level(logging.INFO, logger=LOGGER):
        status, body = _call(guard, downstream, chunks, path="/v1/completions")
    assert (status, downstream.calls) == (413, 0)  # not the base model's silent answer
    error = json.loads(body)["error"]
    assert error["param"] == "lora_name" and error["code"] == 413
    assert f"over the {MAX_INSPECTED_BYTES} bytes" in error["message"]
    assert "send the adapter's name as `model`" in error["message"]
    size = len(b"".join(chunks))
    assert caplog.messages == [f"lora_name guard: rejected (too_large) body of {size} bytes"]


def test_a_huge_body_with_the_field_is_not_kept_past_the_limit() -> None:
    chunks = [b'{"lora_name": "alpha", "prompt": "', *([b"x" * 1_048_576] * 40), b'"}']
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> Message:
        return pending.pop(0)

    read = niodoo_lora_guard._read_body
    messages, size, found = asyncio.run(read(receive, keep_all=False))
    assert (size, found, pending) == (len(b"".join(chunks)), True, [])  # all read
    assert sum(len(m["body"]) for m in messages) <= MAX_INSPECTED_BYTES


def test_invalid_json_is_left_for_vllm_to_refuse(tmp_path: Path) -> None:
    guard, downstream = _guard(tmp_path, "reject")
    for body in (b'{"lora_name": "alpha", ', b'["lora_name"]', b"[" * 100_000 + b'"lora_name"'):
        downstream.received.clear()
        downstream.client.clear()
        status, _ = _call(guard, downstream, [body])
        assert (status, downstream.body) == (200, body)


# --- reject --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fields", "expected"),
    [
        (
            "reject",
            {"model": "tiny", "lora_name": "alpha"},
            (
                "send the adapter's name as `model`",
                "lora_name guard: rejected (reject_mode) lora_name='alpha'",
            ),
        ),
        (
            "route",
            {"model": "beta", "lora_name": "alpha"},
            (
                "disagree",
                "lora_name guard: rejected (conflicting_model) lora_name='alpha' model='beta'",
            ),
        ),
    ],
)
def test_a_refusal_is_a_400_naming_the_adapters_and_serves_nothing(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    fields: dict[str, str],
    expected: tuple[str, str],
) -> None:
    said, logged = expected  # what the answer says, the line vLLM logs
    guard, downstream = _guard(tmp_path, mode)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        status, body = _call(guard, downstream, [_body(**fields)])
    assert status == 400 and downstream.calls == 0
    message = _error(body)["message"]
    assert said in message and "'alpha', 'beta'" in message
    assert caplog.messages == [logged]


def test_the_field_split_across_two_chunks_is_found(tmp_path: Path) -> None:
    guard, downstream = _guard(tmp_path, "reject")
    body = _body(model="tiny", lora_name="alpha")
    cut = body.index(b'"lora_name"') + 5
    for chunks in ([body[:cut], body[cut:]], [body[: cut - 3], body[cut - 3 : cut], body[cut:]]):
        downstream.client.clear()
        status, _ = _call(guard, downstream, chunks)
        assert status == 400 and downstream.calls == 0


def test_a_null_lora_name_asks_for_no_adapter(tmp_path: Path) -> None:
    guard, downstream = _guard(tmp_path, "reject")
    body = _body(model="tiny", lora_name=None)
    status, _ = _call(guard, downstream, [body])
    assert (status, downstream.body) == (200, body)


def test_a_request_without_the_api_key_is_left_to_vllm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sekrit")
    guard, downstream = _guard(tmp_path, "reject")
    body = _body(model="tiny", lora_name="alpha")
    status, _ = _call(guard, downstream, [body], headers=[(b"authorization", b"Bearer nope")])
    assert (status, downstream.calls) == (200, 1)  # vLLM answers 401 there, naming nothing
    downstream.client.clear()
    status, _ = _call(guard, downstream, [body], headers=[(b"authorization", b"Bearer sekrit")])
    assert (status, downstream.calls) == (400, 1)


# --- route ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "", None, "alpha"])
def test_route_serves_the_named_adapter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, model: str | None
) -> None:
    guard, downstream = _guard(tmp_path, "route")
    fields: dict[str, Any] = {"lora_name": "alpha", "temperature": 0, "max_tokens": 3}
    if model is not None:
        fields["model"] = model
    body = _body(**fields)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        status, _ = _call(guard, downstream, [body], headers=headers)
    assert status == 200
    expected = {k: v for k, v in json.loads(body).items() if k != "lora_name"}
    assert downstream.request == {**expected, "model": "alpha"}
    assert dict(downstream.scope["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": b"%d" % len(downstream.body),
    }
    assert caplog.messages == ["lora_name guard: routed to adapter 'alpha'"]


def test_route_refuses_an_unknown_adapter_naming_the_served_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard, downstream = _guard(tmp_path, "route")
    long_name = "LoRA rank 99 is greater than max_lora_rank 16\n" * 100
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for name in ("zeta", long_name, 7):
            downstream.client.clear()
            status, body = _call(guard, downstream, [_body(model="tiny", lora_name=name)])
            assert status == 400 and "'alpha', 'beta'" in _error(body)["message"]
    assert downstream.calls == 0
    assert caplog.messages[0] == "lora_name guard: rejected (unknown_adapter) lora_name='zeta'"
    # a client's name is cut and kept on one line
    assert len(caplog.messages[1]) < 160 and "\n" not in caplog.messages[1]


def test_route_follows_the_supervisors_rewritten_settings(tmp_path: Path) -> None:
    """The supervisor's own writer, as after a live adapter change: a same-size rewrite
    right after the first (same size, perhaps the same mtime tick) is still seen."""
    written = LoraGuard(tmp_path, "route", "tiny", ("alpha", "delta"))
    write_guard(written)
    downstream = Downstream()
    guard = LoraNameGuard(downstream, str(written.settings_path))
    status, _ = _call(guard, downstream, [_body(lora_name="gamma")])
    assert status == 400
    size = written.settings_path.stat().st_size
    write_guard_adapters(written, ["alpha", "gamma"])
    assert written.settings_path.stat().st_size == size
    downstream.client.clear()
    status, _ = _call(guard, downstream, [_body(lora_name="gamma")])
    assert status == 200 and downstream.request["model"] == "gamma"


def test_unreadable_settings_reject_rather_than_serve_the_base_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(SETTINGS_ENV, str(tmp_path / "missing.json"))
    downstream = Downstream()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        guard = LoraNameGuard(downstream)
        for _ in range(3):
            downstream.client.clear()
            status, _ = _call(guard, downstream, [_body(lora_name="alpha")])
            assert status == 400 and downstream.calls == 0
    # said once, not on every request
    assert [m for m in caplog.messages if "settings unusable" in m] == [
        f"lora_name guard: settings unusable (cannot read {tmp_path / 'missing.json'}: "
        f"[Errno 2] No such file or directory: '{tmp_path / 'missing.json'}'); mode reject"
    ]


# --- hostile bodies and the other generation routes ---------------------------------------------


def test_route_keeps_a_lone_surrogate_escape(tmp_path: Path) -> None:
    """UTF-8 cannot encode U+D800: the rewritten body keeps it escaped, as the client sent."""
    guard, downstream = _guard(tmp_path, "route")
    body = b'{"model":"tiny","lora_name":"alpha","prompt":"\\ud800 \xc3\xa9"}'
    status, _ = _call(guard, downstream, [body], path="/v1/completions")
    assert status == 200
    assert downstream.body.isascii()
    assert downstream.request == {"model": "alpha", "prompt": "\ud800 \u00e9"}


@pytest.mark.parametrize("mode", ["reject", "route"])
@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"tiny","lora_name":"alpha","temperature":NaN,"top_p":Infinity}',
        b'{"model":"tiny","lora_name":"alpha","seed":' + b"9" * 5000 + b"}",  # int digit cap
        b'{"model":"tiny","lora_name":"alpha","prompt":"\xff\xfe"}',  # no UTF-8
        b'{"model":"tiny","lora_name":"alpha","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model":"tiny","lora_name":' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"model":"tiny","lora_name":"alpha","prompt":"\\udfff\\ud800"}',
    ],
)
def test_no_body_makes_the_guard_raise(tmp_path: Path, mode: str, body: bytes) -> None:
    guard, downstream = _guard(tmp_path, mode)
    status, _ = _call(guard, downstream, [body], path="/v1/completions")
    assert status in (200, 400)
    if downstream.calls and downstream.body != body:  # rewritten: it parses
        assert downstream.request["model"] == "alpha"


def test_a_failure_of_the_guard_is_a_400_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    guard, downstream = _guard(tmp_path, "route")

    def broken(request: object) -> bytes:
        raise RecursionError("x\n" * 40)  # as json.dumps may, quoting the client

    monkeypatch.setattr(guard, "_decide", broken)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        status, body = _call(guard, downstream, [_body(model="tiny", lora_name="alpha")])
    assert (status, downstream.calls) == (400, 0)
    assert b"could not read this request" in body
    [said] = caplog.messages  # one line, the client's text bounded
    quoted = repr("x\n" * 32 + "...")
    assert said == f"lora_name guard: failed on a request (RecursionError: {quoted})"
    assert all(record.exc_info is None for record in caplog.records)  # no traceback


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions/batch",
        "/v1/messages",
        "/cohere/v2/chat",
        "/invocations",
        "/v1/systemone",
        "/generative_scoring",
    ],
)
def test_the_other_generation_routes_are_guarded(tmp_path: Path, path: str) -> None:
    assert path in GUARDED_PATHS
    guard, downstream = _guard(tmp_path, "route")
    status, _ = _call(guard, downstream, [_body(model="tiny", lora_name="alpha")], path=path)
    assert status == 200 and downstream.request["model"] == "alpha"
    rejecting, downstream = _guard(tmp_path, "reject")
    status, _ = _call(rejecting, downstream, [_body(model="tiny", lora_name="alpha")], path=path)
    assert (status, downstream.calls) == (400, 0)
