"""What the fake serves: base model and adapters, canned completions, metrics.

No HTTP here: the handler in ``endpoints.py`` calls these and turns ``ApiError`` into the
JSON error body vLLM sends (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm._fake import texts
from vllm._fake.logs import emit

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "LOAD_FIELDS",
    "UNLOAD_FIELDS",
    "Adapter",
    "ApiError",
    "ServingState",
    "check_adapter",
]

# Field names (and aliases) of vLLM 0.32's request models; anything else is "ignored".
_SAMPLING = (
    "add_special_tokens allowed_token_ids bad_words cache_salt ec_transfer_params echo "
    "frequency_penalty ignore_eos include_stop_str_in_output kv_transfer_params "
    "length_penalty logit_bias logprob_token_ids logprobs max_tokens min_p min_tokens "
    "mm_payload model n presence_penalty priority prompt_logprobs repetition_detection "
    "repetition_penalty request_id response_format return_mm_kwargs return_token_ids "
    "return_token_offsets return_tokens_as_token_ids routed_experts_prompt_start seed "
    "session_id skip_special_tokens spaces_between_special_tokens stop stop_token_ids "
    "stream stream_interval stream_options structured_outputs temperature "
    "thinking_token_budget top_k top_p truncate_prompt_tokens truncation_side "
    "use_beam_search user vllm_xargs watermarking"
)
CHAT_FIELDS = frozenset(
    (
        _SAMPLING + " add_generation_prompt chat_template chat_template_kwargs "
        "continue_final_message documents include_reasoning max_completion_tokens "
        "media_io_kwargs messages mm_processor_kwargs parallel_tool_calls reasoning_effort "
        "return_prompt_text tool_choice tools top_logprobs"
    ).split()
)
COMPLETION_FIELDS = frozenset((_SAMPLING + " prompt prompt_embeds suffix").split())
LOAD_FIELDS = frozenset({"lora_name", "lora_path", "load_inplace", "is_3d_lora_weight"})
UNLOAD_FIELDS = frozenset({"lora_name", "lora_int_id"})
_CANNED = "This is a canned reply from the fake vLLM 0.32.0 serving {model}."


# The first token's top log-probabilities: the base model's; an adapter moves them, unless its
# folder holds NO_EFFECT_MARKER (an adapter vLLM loads that changes nothing, as a zero lora_B).
_BASE_TOP = {"This": -0.25, "The": -1.75, "A": -2.5, "It": -3.0, "We": -3.5, "I": -4.0}
NO_EFFECT_MARKER = "fake-no-effect"


def _logprobs(
    request: dict[str, Any], adapter: Adapter | None, words: list[str]
) -> dict[str, Any] | None:
    asked = request.get("logprobs")
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 0:
        return None
    shift = 0.0
    if adapter is not None and not (Path(adapter.path) / NO_EFFECT_MARKER).exists():
        shift = 0.5
    top = {token: value - shift * rank for rank, (token, value) in enumerate(_BASE_TOP.items())}
    shown = dict(list(top.items())[: max(asked, 1)])
    first = words[0] if words else ""
    return {
        "text_offset": [0],
        "token_logprobs": [top.get(first, -0.25)],
        "tokens": [first],
        "top_logprobs": [shown],
    }


class ApiError(Exception):
    """An error response: HTTP status, vLLM error type, message, offending parameter."""

    def __init__(self, status: int, err_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.err_type, self.message, self.param = status, err_type, message, param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    base_model_name: str | None = None


@dataclass(frozen=True)
class AdapterProblem:
    """Why an adapter cannot load: the API error, and the worker's error if it got that far."""

    error: ApiError
    worker_error: str | None


def check_adapter(name: str, path: str, max_rank: int, enable_lora: bool) -> AdapterProblem | None:
    """vLLM's load-time checks of an adapter directory (``adapter_config.json``)."""
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        message = f"Loading lora {name} failed: No adapter found for {path}"
        return AdapterProblem(ApiError(404, "NotFoundError", message), None)
    errors: list[str] = []
    if not enable_lora:
        errors.append("LoRA is not enabled. Use --enable-lora to enable LoRA.")
    else:
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            ranks = [
                int(config.get("r", 8)),
                *map(int, (config.get("rank_pattern") or {}).values()),
            ]
            bias = config.get("bias", "none")
        except (ValueError, TypeError, AttributeError) as e:
            errors.append(f"Invalid adapter_config.json: {e}")
        else:
            if max(ranks) > max_rank:
                errors.append(f"LoRA rank {max(ranks)} is greater than max_lora_rank {max_rank}.")
            if bias != "none":
                errors.append("Adapter bias is not supported.")
    if not errors:
        return None
    worker_error = " ".join(errors)
    message = texts.add_lora_failed(worker_error)
    return AdapterProblem(ApiError(500, "InternalServerError", message), worker_error)


def _go_float(value: float) -> str:
    # prometheus_client prints floats the Go way: 1.7e+09 rather than 1700000000.0.
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6 and "e" not in text:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _count_words(value: object) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        return _count_words(value.get("content"))
    return 0


class ServingState:
    """Models, adapters and engine liveness, shared by the HTTP threads and the main loop."""

    def __init__(
        self,
        *,
        model_path: str,
        served_names: list[str],
        max_model_len: int,
        enable_lora: bool,
        max_loras: int,
        max_lora_rank: int,
        data_parallel_size: int = 1,
    ) -> None:
        self.model_path = model_path
        self.data_parallel_size = max(data_parallel_size, 1)
        self.served_names = served_names
        self.max_model_len = max_model_len
        self.enable_lora = enable_lora
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.engine_pid = 0
        self.worker_pid = 0
        self.engine_dead = False
        self.hung = False
        self.hung_rank: int | None = None  # rank_hang_after: this engine never answers
        self.slow_rank: int | None = None  # rank_slow_after: this engine answers late
        self.slow_seconds = 0.0
        self.no_completions = False  # a pooling model's server: no /v1/completions
        self.draining = False  # SIGTERM with --shutdown-timeout: no new requests
        self.in_flight = 0
        self._lock = threading.Lock()
        self._adapters: dict[str, Adapter] = {}
        self._lora_series: dict[tuple[str, str], float] = {("", ""): time.time()}
        self._finished: dict[tuple[int, str], int] = {}  # (engine, finish reason)
        self._warned: set[str] = set()

    def begin_request(self) -> bool:
        """Count a completion in flight; False (not counted) while draining."""
        with self._lock:
            if self.draining:
                return False
            self.in_flight += 1
            return True

    def end_request(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def warn_once(self, key: str) -> bool:
        """True the first time ``key`` is seen (vLLM's ``warning_once``)."""
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
        return first

    def adapters(self) -> list[Adapter]:
        with self._lock:
            return list(self._adapters.values())

    def model_cards(self) -> list[dict[str, Any]]:
        now = int(time.time())

        def card(ident: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": now,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
            return {
                "id": ident,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": max_len,
                "permission": [permission],
            }

        cards = [
            card(name, self.model_path, None, self.max_model_len) for name in self.served_names
        ]
        cards += [
            card(a.name, a.path, a.base_model_name or self.served_names[0], None)
            for a in self.adapters()
        ]
        return cards

    def resolve(self, model: object) -> Adapter | None:
        """The adapter ``model`` names, None for the base model; ApiError(404) if unknown."""
        if model is None or model == "" or model in self.served_names:
            return None
        with self._lock:
            adapter = self._adapters.get(str(model))
        if adapter is not None:
            return adapter
        aliases = ", ".join(self.served_names)
        raise ApiError(
            404,
            "NotFoundError",
            f"The model `{model}` does not exist. Valid aliases: {aliases}.",
            param="model",
        )

    def add_adapter(self, adapter: Adapter) -> None:
        with self._lock:
            self._adapters[adapter.name] = adapter
        emit(
            texts.LORA_LOADED,
            logging.INFO,
            "Loaded new LoRA adapter: name '%s', path '%s'",
            adapter.name,
            adapter.path,
        )

    def has_adapter(self, name: str) -> bool:
        with self._lock:
            return name in self._adapters

    def remove_adapter(self, name: str, *, quietly: bool = False) -> bool:
        with self._lock:
            removed = self._adapters.pop(name, None) is not None
        if removed and not quietly:
            emit(texts.LORA_REMOVED, logging.INFO, "Removed LoRA adapter: name '%s'", name)
        return removed

    def generate(
        self, kind: str, request: dict[str, Any], adapter: Adapter | None, engine: int = 0
    ) -> dict[str, Any]:
        """A whole non-streamed response for ``chat`` or ``completion``, counted as finished
        by ``engine`` (the pinned rank; unpinned requests count as engine 0)."""
        model = str(request.get("model") or self.served_names[0])
        words = _CANNED.format(model=model).split()
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "length"
        text = " ".join(words)
        prompt = _count_words(request.get("messages") if kind == "chat" else request.get("prompt"))
        usage = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + len(words),
            "completion_tokens": len(words),
            "prompt_tokens_details": None,
        }
        self._note_finished(adapter, finish, engine)
        created = int(time.time())
        if kind == "chat":
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "tool_calls": [],
            }
            choice: dict[str, Any] = {"index": 0, "message": message}
            ident, obj = f"chatcmpl-{uuid.uuid4().hex}", "chat.completion"
        else:
            choice = {"index": 0, "text": text}
            ident, obj = f"cmpl-{uuid.uuid4().hex}", "text_completion"
        choice |= {
            "logprobs": _logprobs(request, adapter, words) if kind == "completion" else None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        return {
            "id": ident,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": None,
            "kv_transfer_params": None,
        }

    def _note_finished(self, adapter: Adapter | None, finish: str, engine: int) -> None:
        now = time.time()
        with self._lock:
            self._finished[engine, finish] = self._finished.get((engine, finish), 0) + 1
            if adapter is not None:
                # vLLM adds a series per state seen; the newest one says what runs now.
                self._lora_series[(adapter.name, "")] = now
                self._lora_series[("", "")] = now + 1e-3

    def metrics_text(self) -> str:
        labels = f'engine="0",model_name="{self.served_names[0]}"'
        lines: list[str] = []
        with self._lock:
            in_flight = float(self.in_flight)  # every completion in flight runs: no queue
        for name, doc, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                in_flight,
            ),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", 0.0),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", 0.0),
        ):
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name}{{{labels}}} {value}"]
        with self._lock:
            finished = dict(self._finished)
            series = dict(self._lora_series)
        name = "vllm:request_success_total"
        lines += [
            f"# HELP {name} Count of successfully processed requests.",
            f"# TYPE {name} counter",
        ]
        for engine in range(self.data_parallel_size):  # one series per engine, as vLLM's DP
            for reason in ("abort", "error", "length", "repetition", "stop"):
                count = float(finished.get((engine, reason), 0))
                lines.append(
                    f'{name}{{engine="{engine}",finished_reason="{reason}",'
                    f'model_name="{self.served_names[0]}"}} {count}'
                )
        if self.enable_lora:
            name = "vllm:lora_requests_info"
            lines += [f"# HELP {name} Running stats on lora requests.", f"# TYPE {name} gauge"]
            for (running, waiting), stamp in series.items():
                lines.append(
                    f'{name}{{max_lora="{self.max_loras}",running_lora_adapters="{running}",'
                    f'waiting_lora_adapters="{waiting}"}} {_go_float(stamp)}'
                )
        return "\n".join(lines) + "\n"
