"""The status as read back, from a file anyone with access to the state folder could have
damaged: each known field checked for its type (a wrong one is dropped and named), and
accessors for the nested values that never raise on JSON of any shape. Text is made safe to
print: control characters escaped (client text reaches the log lines the status quotes),
long values clipped with a visible "…".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["checked", "count", "mapping", "number", "shown", "text_list"]

_NUMBER = (int, float)
_OPTIONAL_MAPPING = (dict, type(None))
# What the supervisor writes (`supervise/status_file.StatusBoard`); other keys pass as they are.
_TYPES: dict[str, tuple[type, ...]] = {
    "supervisor_pid": (int,),
    "supervisor_create_time": _NUMBER,
    "state": (str,),
    "since": _NUMBER,
    "reason": (str,),
    "vllm_pid": (int, type(None)),
    "vllm_version": (str, type(None)),
    "served_model": (str,),
    "adapters": (list,),
    "adapters_live_only": (list,),
    "starts": (int,),
    "restarts": (int,),
    "last_exit": (str, type(None)),
    "last_check": _OPTIONAL_MAPPING,
    "consecutive_failures": (int,),
    "phase": (str, type(None)),
    "events": (dict,),
    "last_crash": _OPTIONAL_MAPPING,
    "log_dropped_bytes": (int,),
    "notify_dropped": (int,),
    "pending_restart": _OPTIONAL_MAPPING,
    "drain": _OPTIONAL_MAPPING,
    "last_reload": _OPTIONAL_MAPPING,
    "maintenance": _OPTIONAL_MAPPING,
    "adapter_effects": (dict,),
    "role": _OPTIONAL_MAPPING,
}


def checked(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The status without its fields of a wrong type, and their names (sorted)."""
    kept: dict[str, Any] = {}
    wrong: list[str] = []
    for key, value in raw.items():
        types = _TYPES.get(key)
        if types is not None and (
            isinstance(value, bool) or not isinstance(value, types) or _not_finite(value)
        ):
            wrong.append(key)
        else:
            kept[key] = value
    return kept, sorted(wrong)


def _not_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def number(value: object) -> float | None:
    """A finite number, else None (bools, strings, 1e999 and ints too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def shown(value: object, limit: int = 100) -> str:
    """One printable line: control characters escaped, cut at `limit` characters with "…"."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # escaping only what can be shown keeps this linear and small
    safe = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def text_list(value: object) -> list[str]:
    """The strings of a JSON list (anything else in it is left out)."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
