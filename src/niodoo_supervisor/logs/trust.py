"""Which text of a vLLM log line vLLM wrote itself, and which a client chose.

vLLM quotes its clients: the names of request fields it ignored, request ids (a client may
send its own ``X-Request-Id``), prompts in the request log, paths in uvicorn's access
lines. No rule may act on that text, or one request naming its field
``LoRA rank 99 is greater than max_lora_rank 16`` would stop the service for good. So:

- `line_kind`: lines known to quote a request. The ignored-fields line feeds only the
  ignored-fields rule, the unknown-model line (it quotes the client's `model`) only the
  unknown-model rule, the `lora_name` guard's lines only its two rules (`ONLY_RULES`); access and request-log lines feed no rule at all.
- `trusted_starts`: in every other line a rule matches only where vLLM's own wording
  stands: at the start of the message, or right after a leading exception type
  (``ValueError: ``) or pydantic's ``Value error, ``. Client text quoted further into a
  line cannot match there.
- `rules.EventScanner` adds the last guard: vLLM serves no request before it logs that its
  HTTP server starts, so a fatal line after that is reported, never acted on.

The patterns here only ever run anchored at the start of a message (`re.match`) and have no
nested repetition that can fail late: each costs time linear in the message.
"""

from __future__ import annotations

import re
from enum import Enum

from niodoo_supervisor.logs.builtin_rules import (
    IGNORED_FIELDS_RULE,
    LORA_GUARD_RULES,
    UNKNOWN_MODEL_RULE,
)
from niodoo_supervisor.logs.line import ParsedLine

__all__ = [
    "IGNORED_FIELDS_PREFIX",
    "LORA_GUARD_PREFIX",
    "ONLY_RULES",
    "LineKind",
    "line_kind",
    "trusted_starts",
]

IGNORED_FIELDS_PREFIX = "The following fields were present in the request but ignored:"
# vLLM 0.32's log of the 404 for an unknown model (chat completions and responses).
UNKNOWN_MODEL_PREFIX = "Error with model error=ErrorInfo(message="
_UNKNOWN_MODEL_TEXTS = ("'The model `", '"The model `')
LORA_GUARD_PREFIX = "lora_name guard: "  # the supervisor's middleware inside vLLM


class LineKind(Enum):
    VLLM = "vllm"  # vLLM's own wording; client text may still be quoted further in
    IGNORED_FIELDS = "ignored_fields"  # names chosen by a client: the ignored-fields rule only
    UNKNOWN_MODEL = "unknown_model"  # a model name chosen by a client: the unknown-model rule only
    LORA_GUARD = "lora_guard"  # the guard's decisions, quoting a client: its two rules only
    REQUEST = "request"  # quotes a request (access log, request log): no rule at all


# The rules a line of each client-text kind may feed.
ONLY_RULES = {
    LineKind.IGNORED_FIELDS: frozenset((IGNORED_FIELDS_RULE,)),
    LineKind.UNKNOWN_MODEL: frozenset((UNKNOWN_MODEL_RULE,)),
    LineKind.LORA_GUARD: LORA_GUARD_RULES,
}

# uvicorn's access line: 'INFO:     127.0.0.1:54898 - "GET /path HTTP/1.1" 200 OK'.
_ACCESS = re.compile(r'\S+:\d+ - "')
# vLLM's request log (RequestLogger and the engine's per-request lines), 0.10-0.33.
_REQUEST_LOG = (
    "Received request ",
    "Generated response ",
    "Added request ",
    "Aborted request",
    "Finished request ",
)
_REQUEST_DETAILS = re.compile(r"Request \S+ details: ")
_LEAD = re.compile(
    r"(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|Exit|Interrupt|Warning): |[ \t]*Value error, "
)


def line_kind(line: ParsedLine) -> LineKind:
    message = line.message
    if message.startswith(IGNORED_FIELDS_PREFIX):
        return LineKind.IGNORED_FIELDS
    if message.startswith(UNKNOWN_MODEL_PREFIX) and message.startswith(
        _UNKNOWN_MODEL_TEXTS, len(UNKNOWN_MODEL_PREFIX)
    ):
        return LineKind.UNKNOWN_MODEL
    if message.startswith(LORA_GUARD_PREFIX):
        return LineKind.LORA_GUARD
    # Whatever header it has: an operator's logging config may route uvicorn's access log
    # through vLLM's formatter.
    if _ACCESS.match(message):
        return LineKind.REQUEST
    if message.startswith(_REQUEST_LOG) or _REQUEST_DETAILS.match(message):
        return LineKind.REQUEST
    return LineKind.VLLM


def trusted_starts(message: str) -> tuple[str, ...]:
    """The texts a start-anchored rule is tried on: the message, and what follows a leading
    exception type (``vllm.v1.engine.exceptions.EngineDeadError: ...``)."""
    lead = _LEAD.match(message)
    return (message,) if lead is None else (message, message[lead.end() :])
