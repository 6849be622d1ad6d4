"""The `lora_name` guard: an ASGI middleware vLLM runs (`--middleware
niodoo_lora_guard.LoraNameGuard`) for `lora.lora_name_field: reject|route`.

vLLM has no `lora_name` request field: it drops it and the base model answers. This guard
stops that at the door. Standard library only, and standalone: the supervisor copies this
file into its state folder and puts that folder first on vLLM's PYTHONPATH; it imports
neither vLLM nor the supervisor.

Only POST requests to the generation endpoints that take a `model` (`GUARDED_PATHS`) are
looked at; everything else goes to vLLM untouched. For those, the body's chunks are
collected (vLLM reads the whole body before parsing it anyway, so this adds no wait) and
searched for the bytes ``"lora_name"``; when absent, the very same chunks are replayed to
vLLM and nothing is parsed. A key a client wrote with JSON escapes (``"\\u006cora_name"``) is
not looked for: that is no client mistake anyone makes, and vLLM still reports it as an
ignored field. The response is never touched, so streamed answers pass as they are.

With the field in a body over `MAX_INSPECTED_BYTES`: HTTP 413 in both modes (the guard
cannot tell where the field is without parsing, and passing it on would be the silent
base-model answer); only that much of a body is kept. With the field in a smaller body
that parses to a JSON object:

- ``reject``: HTTP 400 in vLLM's error format saying to send the adapter's name as `model`.
- ``route``: `lora_name` naming a served adapter while `model` is the base model's served
  name, empty or absent: the body is rewritten (`model` = the adapter, `lora_name` removed)
  and served. `model` equal to `lora_name`: served as that adapter. An unknown `lora_name`,
  or `model` naming something else: 400 naming the served adapters.

`"lora_name": null` counts as absent (a client serialising an empty option asks for no
adapter, and gets none). A request vLLM would refuse for its API key (a key in
`VLLM_API_KEY`; the supervisor's preflight refuses `--api-key` in vLLM's arguments with the
guard) is passed on for vLLM to answer 401: the guard's answers name the adapters. Whatever
the body, no exception leaves the guard: a failure of its own is one log line and a 400.

Settings come from the JSON file `SETTINGS_ENV` names: ``{"mode", "served_model",
"adapters"}``; it is read again when it changed (the supervisor rewrites it after a live
adapter change), checked only on requests that carry the field. Each decision is one log
line under ``vllm.`` (so vLLM's handler prints it in vLLM's format) starting with
`LOG_PREFIX`; client-chosen names in it are repr()'d and cut to `MAX_NAME` characters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "GUARDED_PATHS",
    "LOG_PREFIX",
    "MAX_INSPECTED_BYTES",
    "SETTINGS_ENV",
    "LoraNameGuard",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SETTINGS_ENV = "NIODOO_LORA_GUARD_SETTINGS"
# vLLM 0.32's routes that generate with the adapter a JSON object's `model` selects (the
# field is dropped on all of them; the Anthropic and Cohere ones do not even log it).
# Pooling (embeddings, score, classify...) and the render/tokenize routes generate nothing.
GUARDED_PATHS = frozenset(
    (
        "/v1/chat/completions",
        "/v1/chat/completions/batch",  # one object: `messages` is a list of conversations
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",  # Anthropic
        "/cohere/v2/chat",
        "/invocations",  # SageMaker: the body of one of the routes above
        "/v1/systemone",  # structured decisions
        "/generative_scoring",
    )
)
LOG_PREFIX = "lora_name guard: "
# A body with the field and larger than this is refused unparsed (vLLM itself has no limit;
# base64 images make chat bodies large): parsing it twice would double vLLM's own cost.
MAX_INSPECTED_BYTES = 16 * 1024 * 1024
MAX_NAME = 64  # characters of a client-chosen name kept in a log line or an answer
_NEEDLE = b'"lora_name"'
_AUTH_PREFIXES = ("/v1",)  # where vLLM's AuthenticationMiddleware asks for the key
_MODES = ("reject", "route")

log = logging.getLogger("vllm.niodoo_lora_guard")


def _shown(value: object) -> str:
    """A client-chosen value for a log line or an answer: bounded and on one line."""
    text = value if isinstance(value, str) else json.dumps(value)[: MAX_NAME + 1]
    if len(text) > MAX_NAME:
        text = text[:MAX_NAME] + "..."
    return repr(text)


class _Settings:
    """The settings file, read again when its identity or time changed."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.mode = "reject"  # until a file says otherwise: never serve the base silently
        self.served_model = ""
        self.adapters: tuple[str, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._failure = ""
        self.refresh()

    def refresh(self) -> None:
        if not self.path:
            self._fail(f"{SETTINGS_ENV} is not set")
            return
        try:
            path = Path(self.path)
            stat = path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            with path.open(encoding="utf-8") as handle:
                data = json.loads(handle.read(1024 * 1024))
            mode, served, adapters = data["mode"], data["served_model"], data["adapters"]
            if mode not in _MODES or not isinstance(served, str) or not isinstance(adapters, list):
                raise ValueError("mode, served_model or adapters has the wrong type")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._fail(f"cannot read {self.path}: {exc}")
            return
        self.mode, self.served_model = mode, served
        self.adapters = tuple(str(name) for name in adapters)
        self._stamp = stamp
        self._failure = ""

    def _fail(self, why: str) -> None:
        if self._stamp is None:  # nothing read yet: the safe mode
            self.mode = "reject"
        if why != self._failure:  # once per cause, not once per request
            log.error("%ssettings unusable (%s); mode %s", LOG_PREFIX, why, self.mode)
        self._failure = why


class LoraNameGuard:
    """The ASGI middleware (Starlette's `add_middleware` calls it with the app)."""

    def __init__(self, app: App, settings_path: str | None = None) -> None:
        self.app = app
        self.settings = _Settings(settings_path or os.environ.get(SETTINGS_ENV))
        key = os.environ.get("VLLM_API_KEY", "")
        self._key_hash = hashlib.sha256(key.encode()).digest() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _guarded(scope):
            await self.app(scope, receive, send)
            return
        # A key vLLM refuses: every byte is kept for vLLM to answer 401 (the guard's answers
        # name the adapters).
        authorized = self._authorized(scope)
        messages, size, found = await _read_body(receive, keep_all=not authorized)
        if found and authorized:
            try:
                verdict = self._verdict(messages, size)
            except Exception as exc:  # never vLLM's 500 with a traceback in its log
                # The exception's text may quote the client's: bounded, on one line.
                why = f"{type(exc).__name__}: {_shown(str(exc))}"
                log.error("%sfailed on a request (%s)", LOG_PREFIX, why)
                verdict = _Refusal(400, "The lora_name guard could not read this request.")
            if isinstance(verdict, _Refusal):
                await _refuse(send, verdict)
                return
            if verdict is not None:
                messages = [{"type": "http.request", "body": verdict, "more_body": False}]
                scope = _with_length(scope, len(verdict))
        await self.app(scope, _replay(messages, receive), send)

    def _verdict(self, messages: list[Message], size: int) -> bytes | _Refusal | None:
        """For a body with the field's bytes: None to pass it on as it is, a rewritten body
        to serve, or the refusal to answer."""
        if size > MAX_INSPECTED_BYTES:  # its chunks were dropped: never the base model
            log.info("%srejected (too_large) body of %d bytes", LOG_PREFIX, size)
            return _Refusal(
                413,
                f"This request carries `lora_name` and its body ({size} bytes) is over the "
                f"{MAX_INSPECTED_BYTES} bytes the lora_name guard reads, so it is not served "
                "(vLLM would ignore the field and answer with the base model): send the "
                "adapter's name as `model`, without `lora_name`.",
            )
        # No field at the top level (it was a nested key), or no JSON object: not the
        # guard's to answer (vLLM refuses what it cannot parse).
        request = _json_object(b"".join(m.get("body", b"") for m in messages))
        if request is None or request.get("lora_name") is None:
            return None
        return self._decide(request)

    def _decide(self, request: dict[str, Any]) -> bytes | _Refusal:
        settings = self.settings
        settings.refresh()
        lora_name, model = request["lora_name"], request.get("model")
        served = ", ".join(repr(name) for name in settings.adapters) or "none"
        if settings.mode == "reject":
            log.info("%srejected (reject_mode) lora_name=%s", LOG_PREFIX, _shown(lora_name))
            return _Refusal(
                400,
                "This server does not take a `lora_name` field (vLLM would ignore it and "
                "answer with the base model): send the adapter's name as `model` instead. "
                f"Served adapters: {served}.",
            )
        if not isinstance(lora_name, str) or lora_name not in settings.adapters:
            log.info("%srejected (unknown_adapter) lora_name=%s", LOG_PREFIX, _shown(lora_name))
            return _Refusal(
                400,
                f"`lora_name` {_shown(lora_name)} names no served adapter. Served adapters: "
                f"{served}. Send the adapter's name as `model`.",
            )
        if model not in (None, "", settings.served_model, lora_name):
            log.info(
                "%srejected (conflicting_model) lora_name=%s model=%s",
                LOG_PREFIX,
                _shown(lora_name),
                _shown(model),
            )
            return _Refusal(
                400,
                f"`lora_name` {_shown(lora_name)} and `model` {_shown(model)} disagree: send "
                f"only `model`, naming the adapter. Served adapters: {served}.",
            )
        rewritten = dict(request, model=lora_name)
        del rewritten["lora_name"]
        # ASCII escapes: a lone surrogate ("\ud800") a client sent stays an escape (UTF-8
        # cannot encode it), and vLLM decodes the escapes to the same text.
        body = json.dumps(rewritten, ensure_ascii=True).encode("ascii")
        log.info("%srouted to adapter %r", LOG_PREFIX, lora_name)
        return body

    def _authorized(self, scope: Scope) -> bool:
        """As vLLM's own key check decides; a refused request is left for it to answer."""
        if self._key_hash is None or not _path(scope).startswith(_AUTH_PREFIXES):
            return True
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                digest = hashlib.sha256(token.encode()).digest()
                return scheme.lower() == "bearer" and hmac.compare_digest(digest, self._key_hash)
        return False


def _path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _guarded(scope: Scope) -> bool:
    return _path(scope) in GUARDED_PATHS


async def _read_body(receive: Receive, *, keep_all: bool) -> tuple[list[Message], int, bool]:
    """The messages of the request body as received, its size, and whether the field's
    bytes are in it (also across a chunk boundary). Unless `keep_all`, a body with the field
    is no longer kept once over `MAX_INSPECTED_BYTES` (it is refused): the rest is read and
    dropped, so the client can finish sending and read the answer."""
    messages: list[Message] = []
    size, found, tail = 0, False, b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            messages.append(message)
            return messages, size, found  # the client left: vLLM sees that as it would
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if not found and chunk:
            keep = len(_NEEDLE) - 1  # a field split across chunks is found at the seam
            found = _NEEDLE in tail + chunk[:keep] or _NEEDLE in chunk
            tail = chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]
        if keep_all or not found or size <= MAX_INSPECTED_BYTES:
            messages.append(message)
        else:
            messages.clear()
        if not message.get("more_body", False):
            return messages, size, found


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The request as a dict; None when it is no JSON object (vLLM answers that itself)."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return request if isinstance(request, dict) else None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(reversed(messages))

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()  # after the body: the client's disconnect, as vLLM expects

    return replayed


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"]
    if len(headers) != len(scope.get("headers", ())):
        headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


class _Refusal(NamedTuple):
    status: int  # 400, or 413 for a body too large to read
    message: str


async def _refuse(send: Send, refusal: _Refusal) -> None:
    error = {
        "message": refusal.message,
        "type": "BadRequestError",
        "param": "lora_name",
        "code": refusal.status,
    }
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
