"""Checking one YAML value against its `Field`: type, range, choices, `${VAR}` expansion.

Pure functions; they return the checked value or a `Rejection` (message and fix), never raise.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from niodoo_supervisor.config.envexpand import expand
from niodoo_supervisor.config.fields import Field, Kind

__all__ = [
    "Rejection",
    "check_host",
    "check_kind",
    "contains_nul",
    "copy_default",
    "expand_tree",
    "range_text",
    "shown",
    "type_name",
]

# Every integer the supervisor or vLLM reads fits in 64 bits; longer ones are typos or attacks
# (and Python refuses to print integers of more than 4300 digits).
_INT_LIMIT = 2**63 - 1
# `${VAR}` in a number field: longer text is no number worth reading.
_LONGEST_NUMBER_TEXT = 64
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


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
        for name in value:
            # The names become environment variable names: execve cannot pass these.
            if not str(name) or "=" in str(name):
                return Rejection(
                    f"the name {shown(str(name))} is empty or contains '='",
                    "use letters, digits and '_' in variable names",
                )
        return {str(name): str(item) for name, item in value.items()}
    return Rejection(f"unsupported kind {kind}")


def _check_number(spec: Field, value: Any) -> Any:
    if spec.allow_auto and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "an integer" if spec.kind is Kind.INT else "a number"
        extra = " or auto" if spec.allow_auto else ""
        return Rejection(
            f"must be {expected}{extra}, not {type_name(value)} {shown(value)}",
            _number_hint(value) or spec.doc,
        )
    if spec.kind is Kind.INT and not isinstance(value, int):
        return Rejection(f"must be an integer, not {value!r}", "drop the fraction")
    if isinstance(value, int) and abs(value) > _INT_LIMIT:
        return Rejection(f"{shown(value)} is out of range", _range_text(spec))
    if not math.isfinite(value):
        # .nan would make every deadline compare false; .inf would never expire
        return Rejection(f"must be a finite number, not {value!r}", spec.doc)
    number = value if spec.kind is Kind.INT else float(value)
    if spec.minimum is not None and number < spec.minimum:
        return Rejection(
            f"{number!r} is below the minimum {_bound(spec.minimum)}", _range_text(spec)
        )
    if spec.maximum is not None and number > spec.maximum:
        return Rejection(
            f"{number!r} is above the maximum {_bound(spec.maximum)}", _range_text(spec)
        )
    if spec.exclusive_minimum is not None and number <= spec.exclusive_minimum:
        return Rejection(
            f"{number!r} must be greater than {_bound(spec.exclusive_minimum)}", _range_text(spec)
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


def _bound(number: float) -> str:
    """604800, not 6.048e+05; 0.5 stays 0.5."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _number_hint(value: Any) -> str:
    """YAML 1.1 reads `1e3` as text: only `1.0e+3` is a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        if "e" in value.lower() and "." not in value:
            return "YAML reads an exponent without a decimal point as text: write e.g. 1.0e+3"
    return ""


def _range_text(spec: Field) -> str:
    bounds = range_text(spec)
    return f"use a value {bounds}" if bounds else "use a smaller value"


def range_text(spec: Field) -> str:
    """`> 0 and <= 3600`; empty for a number without bounds."""
    low = (
        f"> {_bound(spec.exclusive_minimum)}"
        if spec.exclusive_minimum is not None
        else (f">= {_bound(spec.minimum)}" if spec.minimum is not None else "")
    )
    high = f"<= {_bound(spec.maximum)}" if spec.maximum is not None else ""
    return " and ".join(part for part in (low, high) if part)


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
    if len(text) > _LONGEST_NUMBER_TEXT:
        return text
    try:
        parsed = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
        return text
    return parsed if isinstance(parsed, (int, float, bool)) else text


def check_host(host: str) -> Rejection | None:
    """`server.host`: an IP address or an ASCII host name (vLLM and the probes resolve it)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    if not host.isascii():
        try:
            ascii_form = host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_form = ""
        fix = f"write its ASCII form {ascii_form}" if ascii_form else "use an IP address"
        return Rejection(f"{shown(host)} is not an ASCII host name", fix)
    return Rejection(
        f"{shown(host)} is not an IP address or a host name",
        "use e.g. 127.0.0.1, 0.0.0.0, :: or a name of letters, digits, '-' and dots",
    )


def contains_nul(value: Any) -> bool:
    """Whether a NUL character hides in a string, a list or a mapping (names included):
    execve and every path function refuse it."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    return False


def shown(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: a message quotes values, never whole files."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT_LIMIT:
        # str() of a huge integer is slow, and refused beyond 4300 digits.
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
