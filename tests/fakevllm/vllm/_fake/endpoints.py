"""The HTTP endpoints: vLLM 0.32's endpoints on a ``ThreadingHTTPServer``.

The server takes the socket the API server bound at start (vLLM binds before loading the
model) and only listens once serving starts, so connections are refused while loading.
Requests are logged in uvicorn's access format; bodies and status codes follow vLLM.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from vllm import __version__
from vllm._fake import texts
from vllm._fake.logs import emit, uvicorn_access
from vllm._fake.models import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    LOAD_FIELDS,
    UNLOAD_FIELDS,
    Adapter,
    ApiError,
    ServingState,
    check_adapter,
)

__all__ = ["FakeHTTPServer"]

_GUARDED = ("/v1", "/v2", "/inference", "/cohere")
_REMOVED_GUIDED = frozenset(
    {
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
    }
)
_JSON = "application/json"


def _dumps(obj: object) -> bytes:
    # Starlette's JSONResponse: compact separators, UTF-8.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _http_error(status: int, phrase: str) -> ApiError:
    # Starlette's 404/405 pass through vLLM's HTTPException handler: type = the phrase.
    return ApiError(status, phrase, phrase)


class FakeHTTPServer(ThreadingHTTPServer):
    """Serves on an already-bound socket; ``stopping`` releases hung handlers."""

    daemon_threads = True
    request_queue_size = 2048  # uvicorn's backlog

    def __init__(
        self,
        sock: socket.socket,
        state: ServingState,
        *,
        api_keys: list[str],
        access_log: bool,
        runtime_lora: bool,
        chunk_seconds: float = 0.0,
    ) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.state = state
        self.api_keys = api_keys
        self.access_log = access_log
        self.runtime_lora = runtime_lora
        self.chunk_seconds = chunk_seconds
        self.stopping = threading.Event()

    def start(self) -> threading.Thread:
        """Listen, then serve on a daemon thread."""
        self.server_activate()
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="http", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # uvicorn closes idle keep-alive connections after 5 s
    server: FakeHTTPServer

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: access lines are written in uvicorn's format by ``_respond``."""

    def handle_one_request(self) -> None:
        if self.server.state.hung:
            self._hang()
            return
        super().handle_one_request()

    def _hang(self) -> None:
        # hang_after: the connection is accepted but nothing is ever answered on it; the
        # thread is released only when the server stops.
        self.server.stopping.wait()
        self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _routes(self) -> dict[str, dict[str, Callable[[bytes], None]]]:
        routes: dict[str, dict[str, Callable[[bytes], None]]] = {
            "/health": {"GET": self._health},
            "/ping": {"GET": self._health, "POST": self._health},
            "/version": {"GET": self._version},
            "/metrics": {"GET": self._metrics},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
        }
        if self.server.state.no_completions:
            del routes["/v1/completions"]
        if self.server.runtime_lora:
            routes["/v1/load_lora_adapter"] = {"POST": self._load_lora}
            routes["/v1/unload_lora_adapter"] = {"POST": self._unload_lora}
        return routes

    def _dispatch(self, method: str) -> None:
        if self.server.state.hung:  # a keep-alive connection was already reading this one
            self._hang()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path
        try:
            if path.startswith(_GUARDED) and not self._authorized():
                self._respond(401, _dumps({"error": "Unauthorized"}), _JSON)
                return
            route = self._routes().get(path)
            if route is None:
                raise _http_error(404, "Not Found")
            handler = route.get(method)
            if handler is None:
                raise _http_error(405, "Method Not Allowed")
            handler(body)
        except ApiError as e:
            self._respond(e.status, _dumps(e.body()), _JSON)

    def _authorized(self) -> bool:
        keys = self.server.api_keys
        if not keys:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and token in keys

    def _respond(self, status: int, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._access_log(status)

    def _access_log(self, status: int) -> None:
        if self.server.access_log:
            host, port = self.client_address[:2]
            uvicorn_access(f"{host}:{port}", self.command, self.path, "1.1", status)

    def _rank(self) -> int | None:
        """The engine a request is pinned to, read as vLLM reads it (not a number: none)."""
        try:
            return int(self.headers.get("X-data-parallel-rank") or "")
        except ValueError:
            return None

    def _json_body(self, body: bytes, known: frozenset[str]) -> dict[str, Any]:
        try:
            request = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(
                400, "Bad Request", f"1 validation error:\n  JSON decode error: {e}"
            ) from None
        if not isinstance(request, dict):
            raise ApiError(400, "Bad Request", "1 validation error:\n  Input should be an object")
        extra = set(request) - known
        if extra:
            removed = extra & _REMOVED_GUIDED
            if removed and self.server.state.warn_once("guided"):
                emit(
                    texts.REMOVED_GUIDED,
                    logging.WARNING,
                    "Request contains the removed guided-decoding field(s) %s, which are "
                    "ignored; output will NOT be constrained. Use `structured_outputs` (or "
                    "`response_format`) instead; see docs/features/structured_outputs.md.",
                    str(sorted(removed)),
                )
            emit(
                texts.IGNORED_FIELDS,
                logging.DEBUG,
                "The following fields were present in the request but ignored: %s",
                extra,
            )
        return request

    def _health(self, _body: bytes) -> None:
        self._respond(503 if self.server.state.engine_dead else 200, b"", None)

    def _version(self, _body: bytes) -> None:
        self._respond(200, _dumps({"version": __version__}), _JSON)

    def _metrics(self, _body: bytes) -> None:
        text = self.server.state.metrics_text().encode()
        self._respond(200, text, "text/plain; version=0.0.4; charset=utf-8")

    def _models(self, _body: bytes) -> None:
        cards = self.server.state.model_cards()
        self._respond(200, _dumps({"object": "list", "data": cards}), _JSON)

    def _chat(self, body: bytes) -> None:
        self._generate("chat", self._json_body(body, CHAT_FIELDS), "messages")

    def _completion(self, body: bytes) -> None:
        state, rank = self.server.state, self._rank()
        if rank is not None and not 0 <= rank < state.data_parallel_size:
            message = f"data_parallel_rank {rank} is out of range [0, {state.data_parallel_size})."
            raise ApiError(400, "Bad Request", message)
        if state.hung_rank is not None and rank == state.hung_rank:
            self._hang()  # rank_hang_after: that engine is gone; vLLM still routes to it
            return
        if state.slow_rank is not None and rank == state.slow_rank:
            time.sleep(state.slow_seconds)  # busy: behind a full batch
        request = self._json_body(body, COMPLETION_FIELDS)
        self._generate("completion", request, "prompt", rank or 0)

    def _generate(self, kind: str, request: dict[str, Any], required: str, engine: int = 0) -> None:
        state = self.server.state
        if required not in request:
            raise ApiError(400, "Bad Request", f"1 validation error:\n  {required}: Field required")
        adapter = state.resolve(request.get("model"))
        if state.engine_dead:
            raise ApiError(500, "InternalServerError", texts.ENGINE_DEAD)
        if adapter is not None and state.warn_once("lora-tokenizer"):
            emit(
                texts.LORA_TOKENIZER,
                logging.WARNING,
                "vLLM has deprecated support for supporting different tokenizers for different "
                "LoRAs. By default, vLLM uses base model's tokenizer. If you are using a LoRA "
                "with its own tokenizer, consider specifying `--tokenizer [lora_path]` to use "
                "the LoRA tokenizer.",
            )
        if not state.begin_request():
            raise ApiError(503, "ServiceUnavailable", "The server is shutting down.")
        try:
            response = state.generate(kind, request, adapter, engine)
            if request.get("stream"):
                self._stream(kind, response)
            else:
                self._respond(200, _dumps(response), _JSON)
        finally:
            state.end_request()

    def _stream(self, kind: str, response: dict[str, Any]) -> None:
        choice = response["choices"][0]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        base = {k: response[k] for k in ("id", "created", "model")}
        base["object"] = "chat.completion.chunk" if kind == "chat" else "text_completion"
        chunks = []
        for i, word in enumerate(text.split(" ")):
            piece = word if i == 0 else " " + word
            delta = {"delta": {"content": piece}} if kind == "chat" else {"text": piece}
            chunks.append(base | {"choices": [{"index": 0, **delta, "finish_reason": None}]})
        last: dict[str, Any] = {"delta": {}} if kind == "chat" else {"text": ""}
        finish = choice["finish_reason"]
        chunks.append(base | {"choices": [{"index": 0, **last, "finish_reason": finish}]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in [*(b"data: " + _dumps(c) + b"\n\n" for c in chunks), b"data: [DONE]\n\n"]:
            if self.server.chunk_seconds:
                time.sleep(self.server.chunk_seconds)
            if self.server.state.engine_dead:
                self.close_connection = True  # cut mid-stream: no last chunk
                return
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self._access_log(200)

    def _load_lora(self, body: bytes) -> None:
        state = self.server.state
        request = self._json_body(body, LOAD_FIELDS)
        name, path = request.get("lora_name"), request.get("lora_path")
        if not name or not path:
            message = "Both 'lora_name' and 'lora_path' must be provided."
            raise ApiError(400, "InvalidUserInput", message)
        name, path = str(name), str(path)
        if name in state.served_names:
            message = f"The lora adapter '{name}' conflicts with a served base model."
            raise ApiError(400, "InvalidUserInput", message)
        if not request.get("load_inplace") and state.has_adapter(name):
            raise ApiError(
                400,
                "InvalidUserInput",
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        problem = check_adapter(name, path, state.max_lora_rank, state.enable_lora)
        if problem is not None:
            if problem.worker_error is not None:
                log_add_lora_failure(state, problem.worker_error)
            raise problem.error
        state.add_adapter(Adapter(name, path))
        message = f"Success: LoRA adapter '{name}' added successfully."
        self._respond(200, message.encode(), None)

    def _unload_lora(self, body: bytes) -> None:
        request = self._json_body(body, UNLOAD_FIELDS)
        name = request.get("lora_name")
        if not name:
            message = "'lora_name' needs to be provided to unload a LoRA adapter."
            raise ApiError(400, "InvalidUserInput", message)
        if not self.server.state.remove_adapter(str(name)):
            raise ApiError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        message = f"Success: LoRA adapter '{name}' removed successfully."
        self._respond(200, message.encode(), None)


def log_add_lora_failure(state: ServingState, worker_error: str) -> None:
    """The Worker and EngineCore ERROR lines of a failed add_lora (05 log)."""
    worker_msg, engine_msg = texts.worker_lora_error(worker_error)
    worker = ("Worker", state.worker_pid or os.getpid())
    emit(texts.WORKER_EXCEPTION, logging.ERROR, worker_msg, proc=worker)
    engine = ("EngineCore", state.engine_pid or os.getpid())
    emit(texts.EC_INVOKE_FAILED, logging.ERROR, engine_msg, proc=engine)
