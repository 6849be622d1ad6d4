"""The console line of a record: `HH:MM:SS level event summary field=value ...`.

Only the fields `CONSOLE_FIELDS` names for the event (all of them for an event without a
row), each clipped to `VALUE_LIMIT` characters (marked with `…`). Client text reaches records
(ignored field names, request ids), so every control character is escaped: a newline cannot
forge a second record and ESC cannot drive the terminal. Colour marks the level when asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from niodoo_supervisor.output.console_fields import CONSOLE_FIELDS

__all__ = ["PROSE_LIMIT", "SUMMARY_LIMIT", "VALUE_LIMIT", "clipped", "escaped", "render_console"]

VALUE_LIMIT = 100
SUMMARY_LIMIT = 160
# The supervisor's own sentences (a config problem and its fix, a crash's reason, a rule's
# advice) are what the person must read: clipped only where they run away.
PROSE_LIMIT = 400
_PROSE = frozenset({"problem", "reason", "hint", "error"})
_META = frozenset({"timestamp", "level", "event", "summary", "exception"})

# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows.
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROLS
}
_ESCAPES_BUT_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != ord("\n")}

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_LEVEL_COLOURS = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}


def escaped(text: str, *, keep_lines: bool = False) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`); with
    `keep_lines`, newlines stay (logfmt escapes those itself, and only those and quotes)."""
    return text.translate(_ESCAPES_BUT_NEWLINE if keep_lines else _ESCAPES)


def clipped(text: str, limit: int = VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_console(event_dict: Mapping[str, Any], *, colour: bool) -> str:
    level = str(event_dict.get("level", "info"))
    clock = str(event_dict.get("timestamp", ""))[11:19]  # HH:MM:SS of the ISO timestamp
    event = clipped(escaped(str(event_dict.get("event", ""))))
    if colour:
        parts = [
            f"{_DIM}{clock}{_RESET}",
            f"{_LEVEL_COLOURS.get(level, '')}{level:<8}{_RESET}",
            f"{_BOLD}{event}{_RESET}",
        ]
    else:
        parts = [clock, f"{level:<8}", event]
    summary = event_dict.get("summary")
    if summary:
        parts.append(clipped(escaped(str(summary)), SUMMARY_LIMIT))
    parts.extend(
        f"{escaped(key)}={_value(value, PROSE_LIMIT if key in _PROSE else VALUE_LIMIT)}"
        for key, value in _shown_fields(event_dict)
    )
    exception = event_dict.get("exception")
    if exception:  # a traceback: its last line says what went wrong
        parts.append(f"exception={_value(str(exception).rstrip().rsplit(chr(10), 1)[-1])}")
    return " ".join(parts)


def _shown_fields(event_dict: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    names = CONSOLE_FIELDS.get(str(event_dict.get("event")))
    keys = names if names is not None else [k for k in event_dict if k not in _META]
    for key in keys:
        value = event_dict.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, Mapping):
            yield from ((str(k), v) for k, v in value.items() if v is not None)
        else:
            yield key, value


def _value(value: Any, limit: int = VALUE_LIMIT) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple | set | frozenset):
        text = ",".join(str(item) for item in value)
    else:
        text = str(value)
    text = clipped(escaped(text), limit)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text
