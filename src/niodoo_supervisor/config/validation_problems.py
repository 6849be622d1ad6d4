"""pydantic's validation errors -> the project's one-line problems, each naming the YAML path
and the fix.

pydantic reports every error at once, each with its location, its kind, the offending input
and the constraint; the key's declaration (`keys.KeyTable`) adds its documentation, range and
choices. Errors a validator raised with `value_types.rejected` carry their own text.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic_core import ErrorDetails

from niodoo_supervisor.config.fields import Field, Kind
from niodoo_supervisor.config.keys import KeyTable
from niodoo_supervisor.config.supervisor_sections import RULE_PROBLEMS
from niodoo_supervisor.config.value_types import ITEM_PROBLEMS, OUT_OF_RANGE, REJECTED
from niodoo_supervisor.config.values import (
    bound,
    described,
    number_hint,
    range_text,
    shown,
    type_name,
)

__all__ = ["ProblemSink", "report_errors"]

ProblemSink = Callable[[str, str, str], None]  # (path, message, fix)

_ADAPTER = re.compile(r"^lora\.adapters\[\d+\](?:\.(?P<key>.+))?$")
_ADAPTER_KEYS = ("name", "path", "base_model_name")
_ADAPTER_NEEDS = {
    "name": ("an adapter needs a name (a string)", "clients send it as `model`"),
    "path": ("an adapter needs a path (a string)", "give the adapter's directory"),
}
_NOT_A_MAPPING = ("model_type", "dict_type", "dataclass_type", "model_attributes_type")
_WRONG_TYPE = ("int_type", "float_type", "bool_type", "string_type", "int_from_float")
_BOUNDS = {
    "greater_than": ("gt", "must be greater than"),
    "greater_than_equal": ("ge", "is below the minimum"),
    "less_than_equal": ("le", "is above the maximum"),
    "less_than": ("lt", "must be less than"),
}


def _path_of(loc: Iterable[int | str]) -> str:
    """("lora", "adapters", 1, "path") -> "lora.adapters[1].path"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def report_errors(
    errors: Iterable[ErrorDetails],
    keys: KeyTable,
    written_empty: Callable[[str], bool],
    report: ProblemSink,
) -> None:
    """Report each error; `written_empty(path)` says whether the YAML wrote that key with no
    value (`python:`), which pydantic reports as missing."""
    for error in errors:
        path = _path_of(error["loc"])
        kind = error["type"]
        ctx: dict[str, Any] = dict(error.get("ctx") or {})
        spec = keys.by_key.get(path)
        if kind == RULE_PROBLEMS:
            for text in ctx["problems"]:
                item_path, _, message = str(text).partition(": ")
                report(item_path or path, message or str(text), "")
        elif kind == ITEM_PROBLEMS:
            for item_path, message, fix in ctx["problems"]:
                report(item_path, message, fix)
        elif adapter := _ADAPTER.match(path):
            report(path, *_adapter_problem(adapter.group("key"), error, ctx))
        elif kind == REJECTED:
            report(path, str(ctx["message"]), ctx["fix"] or (spec.doc if spec else ""))
        elif kind == OUT_OF_RANGE:
            report(path, str(ctx["message"]), _range_fix(spec))
        elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
            report(path, "unknown key", keys.suggest(path))
        elif kind == "missing":
            _report_missing(path, keys, written_empty, report)
        elif kind in _NOT_A_MAPPING:
            report(
                path,
                f"must be a mapping, not {type_name(error['input'])}",
                "indent its keys under it",
            )
        elif spec is None:
            report(path, error["msg"], "see docs/configuration.md")
        else:
            report(path, *_value_problem(spec, error, ctx))


def _report_missing(
    path: str, keys: KeyTable, written_empty: Callable[[str], bool], report: ProblemSink
) -> None:
    spec = keys.by_key.get(path)
    if spec is None:  # a required section: each required key in it is missing
        for inner in keys.fields:
            if inner.required and inner.key.startswith(path + "."):
                report(inner.key, "required key is missing", f"add {inner.key}: {inner.doc}")
    elif written_empty(path):
        report(path, "must not be empty", f"set it: {spec.doc}")
    else:
        report(path, "required key is missing", f"add {path}: {spec.doc}")


def _adapter_problem(key: str | None, error: ErrorDetails, ctx: dict[str, Any]) -> tuple[str, str]:
    """`key` is None for the item itself (`lora.adapters[2]`)."""
    kind = error["type"]
    if kind == REJECTED and ctx["fix"]:
        return str(ctx["message"]), str(ctx["fix"])
    if key is None:
        if kind in _NOT_A_MAPPING:
            return (
                "must be a mapping with name and path",
                "write `- name: a` and `  path: /adapters/a`",
            )
        return error["msg"], "see docs/configuration.md"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        close = difflib.get_close_matches(key, _ADAPTER_KEYS, n=1)
        return "unknown key", (
            f"did you mean {close[0]}?" if close else f"adapter keys are {', '.join(_ADAPTER_KEYS)}"
        )
    if key in _ADAPTER_NEEDS and kind in ("missing", "string_type", REJECTED):
        return _ADAPTER_NEEDS[key]
    if kind == "string_type":
        return f"must be a string, not {type_name(error['input'])}", "name the base model"
    return error["msg"], "see docs/configuration.md"


def _value_problem(spec: Field, error: ErrorDetails, ctx: dict[str, Any]) -> tuple[str, str]:
    kind, value = error["type"], error["input"]
    if kind == "tuple_type" and spec.kind is Kind.ADAPTERS:
        return (
            f"must be a list of adapters, not {type_name(value)}",
            "write `- name: a` / `  path: ...` items",
        )
    if kind in _WRONG_TYPE:
        return _wrong_type(spec, value)
    if kind == "finite_number":
        # .nan would make every deadline compare false; .inf would never expire
        return f"must be a finite number, not {value!r}", spec.doc
    if kind in _BOUNDS:
        name, said = _BOUNDS[kind]
        number = float(value) if spec.kind is Kind.FLOAT else value
        return f"{number!r} {said} {bound(ctx[name])}", _range_fix(spec)
    if kind == "literal_error" and spec.kind is Kind.STR and not isinstance(value, str):
        return _wrong_type(spec, value)
    if kind == "literal_error" and isinstance(value, str) and not value.strip():
        return "must not be empty", spec.doc
    if kind == "literal_error":
        choices = [str(choice) for choice in spec.choices or ()]
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.75)
        options = ", ".join(choices) + (", auto" if spec.allow_auto else "")
        return f"{shown(value)} is not accepted", (
            f"did you mean {close[0]}?" if close else f"use one of {options}"
        )
    return error["msg"], spec.doc


def _wrong_type(spec: Field, value: Any) -> tuple[str, str]:
    if spec.kind is Kind.BOOL:
        return f"must be true or false, not {described(value)}", "write true or false"
    if spec.kind in (Kind.INT, Kind.FLOAT):
        if spec.kind is Kind.INT and isinstance(value, float) and math.isfinite(value):
            return f"must be an integer, not {value!r}", "drop the fraction"
        expected = "an integer" if spec.kind is Kind.INT else "a number"
        return f"must be {expected}, not {described(value)}", number_hint(value) or spec.doc
    return f"must be a string, not {type_name(value)}", "quote it"


def _range_fix(spec: Field | None) -> str:
    bounds = range_text(spec) if spec else ""
    return f"use a value {bounds}" if bounds else "use a smaller value"
