"""The request mistakes clients made, in a few words for systemd's STATUS= and the top of
`niodoo-supervisor status`: requests that sent `lora_name` (answered by the base model, or,
with `lora.lora_name_field: reject|route`, the guard's routed and refused ones), other
ignored fields, and requests for models vLLM does not serve, each with the time of the
last one. Read from `EventCounters.as_dict()` (or the status file written from it), so a
status file from an older supervisor, without some keys, still reads."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from niodoo_supervisor.logs.builtin_rules import UNKNOWN_MODEL_RULE

__all__ = ["request_mistakes"]

_LORA_NAME = "lora_name"
# The guard's rules (builtin_rules.LORA_GUARD_RULES) and what became of those requests.
_GUARD_OUTCOMES = (
    ("lora_name_routed", "routed to the adapter it names"),
    ("lora_name_rejected", "refused by the guard (HTTP 400 or 413)"),
)


def _clock(when: object) -> str:
    if not _number(when):
        return "?"
    assert isinstance(when, (int, float))
    return time.strftime("%H:%M:%S", time.localtime(when))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _requests(n: int, what: str, last: object) -> str:
    return f"{n} {'request' if n == 1 else 'requests'} {what} (last {_clock(last)})"


def request_mistakes(events: Mapping[str, Any]) -> list[str]:
    """One short phrase per kind of mistake seen, e.g. "3 requests sent lora_name (last
    12:03:04), answered by the base model"; empty when none was. Tolerates any JSON."""
    fields = _mapping(events.get("ignored_fields"))
    fields_last = _mapping(events.get("ignored_fields_last"))
    parts = []
    lora = _count(fields.get(_LORA_NAME))
    if lora:
        last = fields_last.get(_LORA_NAME)
        parts.append(f"{_requests(lora, f'sent {_LORA_NAME}', last)}, answered by the base model")
    rules = _mapping(events.get("rules"))
    for rule, outcome in _GUARD_OUTCOMES:
        counted = _mapping(rules.get(rule))
        n = _count(counted.get("count"))
        if n:
            parts.append(
                f"{_requests(n, f'sent {_LORA_NAME}', counted.get('last_time'))}, {outcome}"
            )
    others = sum(_count(n) for name, n in fields.items() if name != _LORA_NAME)
    if others:
        times = [t for name, t in fields_last.items() if name != _LORA_NAME and _number(t)]
        last = max(times, default=None)
        parts.append(f"{others} other ignored request field(s) (last {_clock(last)})")
    unknown = _mapping(rules.get(UNKNOWN_MODEL_RULE))
    count = _count(unknown.get("count"))
    if count:
        parts.append(_requests(count, "for unknown models", unknown.get("last_time")))
    return parts
