"""Checking one YAML value against its `Field`: type, range, choices, `${VAR}` expansion.

Pure functions; they return the checked value or a `Rejection` (message and fix), never raise.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .envexpand import expand
from .fields import Field, Kind

__all__ = ["Rejection", "check_kind", "copy_default", "expand_tree", "type_name"]


@dataclass(frozen=True)
class Rejection:
    message: str
    fix: str = ""


def check_kind(spec: Field, value: Any) -> Any:
    """Check one scalar or list value against its field; returns the value or a Rejection."""
    kind = spec.kind
    if kind in (Kind.STR, Kind.PATH):
        if spec.allow_auto and value == "auto":
            return value
        if not isinstance(value, str):
            return Rejection(f"must be a string, not {type_name(value)}", "quote it")
        if not value.strip():
            return Rejection("must not be empty", spec.doc)
        return _check_choice(spec, value)
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            return Rejection(
                f"must be true or false, not {type_name(value)} {value!r}", "write true or false"
            )
        return value
    if kind in (Kind.INT, Kind.FLOAT):
        return _check_number(spec, value)
    if kind is Kind.STR_LIST:
        if isinstance(value, str):
            return Rejection(
                "must be a list of strings, not one string", "write each item on its own `- ` line"
            )
        if not isinstance(value, list) or not all(_is_plain_scalar(item) for item in value):
            return Rejection(
                f"must be a list of strings, not {type_name(value)}",
                "write each item on its own `- ` line",
            )
        return tuple(str(item) for item in value)
    if kind is Kind.STR_MAP:
        if not isinstance(value, dict) or not all(
            _is_plain_scalar(item) for item in value.values()
        ):
            return Rejection("must be a mapping of names to strings", "write `NAME: value` lines")
        return {str(name): str(item) for name, item in value.items()}
    return Rejection(f"unsupported kind {kind}")


def _check_number(spec: Field, value: Any) -> Any:
    if spec.allow_auto and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "an integer" if spec.kind is Kind.INT else "a number"
        extra = " or auto" if spec.allow_auto else ""
        return Rejection(f"must be {expected}{extra}, not {type_name(value)} {value!r}", spec.doc)
    if spec.kind is Kind.INT and not isinstance(value, int):
        return Rejection(f"must be an integer, not {value!r}", "drop the fraction")
    if not math.isfinite(value):
        # .nan would make every deadline compare false; .inf would never expire
        return Rejection(f"must be a finite number, not {value!r}", spec.doc)
    number = value if spec.kind is Kind.INT else float(value)
    if spec.minimum is not None and number < spec.minimum:
        return Rejection(f"{number!r} is below the minimum {spec.minimum:g}", _range_text(spec))
    if spec.maximum is not None and number > spec.maximum:
        return Rejection(f"{number!r} is above the maximum {spec.maximum:g}", _range_text(spec))
    if spec.exclusive_minimum is not None and number <= spec.exclusive_minimum:
        return Rejection(
            f"{number!r} must be greater than {spec.exclusive_minimum:g}", _range_text(spec)
        )
    return _check_choice(spec, number)


def _check_choice(spec: Field, value: Any) -> Any:
    if spec.choices is None or value in spec.choices:
        return value
    options = ", ".join(str(choice) for choice in spec.choices) + (
        ", auto" if spec.allow_auto else ""
    )
    close = difflib.get_close_matches(
        str(value), [str(choice) for choice in spec.choices], n=1, cutoff=0.75
    )
    if spec.key == "model.quantization" and not close:
        # vLLM knows more methods than this list and checks them itself when the model loads.
        return value
    hint = f"did you mean {close[0]}?" if close else f"use one of {options}"
    return Rejection(f"{value!r} is not accepted", hint)


def _range_text(spec: Field) -> str:
    low = (
        f"> {spec.exclusive_minimum:g}"
        if spec.exclusive_minimum is not None
        else (f">= {spec.minimum:g}" if spec.minimum is not None else "")
    )
    high = f"<= {spec.maximum:g}" if spec.maximum is not None else ""
    return "use a value " + " and ".join(part for part in (low, high) if part)


def expand_tree(value: Any, environ: Mapping[str, str], *, typed: bool = False) -> Any:
    """Expand ${VAR} in every string inside `value`. With `typed` (number and boolean fields),
    a value that is one variable (`port: ${PORT}`) is read back as a YAML scalar so that it
    type-checks as a number; string fields keep the text as it is (`name: ${N}` with N=on)."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        expanded = expand(value, environ)
        if typed and value.strip().startswith("${"):
            return _scalar_from_text(expanded)
        return expanded
    if isinstance(value, list):
        return [expand_tree(item, environ) for item in value]
    if isinstance(value, dict):
        return {key: expand_tree(item, environ) for key, item in value.items()}
    return value


def _scalar_from_text(text: str) -> Any:
    """`${PORT}` -> 8000 (int), `${FLAG}` -> true (bool); anything else stays a string."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return parsed if isinstance(parsed, (int, float, bool)) else text


def _is_plain_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)


def copy_default(default: object) -> object:
    if isinstance(default, list):
        return tuple(default)
    if isinstance(default, dict):
        return dict(default)
    return default
