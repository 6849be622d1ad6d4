"""Pure helpers for values read from YAML: `${VAR}` expansion over a tree, host names, NUL
characters, and how a value, a type or a range is quoted in a problem line."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from niodoo_supervisor.config.envexpand import expand
from niodoo_supervisor.config.fields import Field

__all__ = [
    "INT_LIMIT",
    "Rejection",
    "bound",
    "check_host",
    "contains_nul",
    "described",
    "expand_tree",
    "is_plain_scalar",
    "number_hint",
    "range_text",
    "shown",
    "type_name",
]

# Every integer the supervisor or vLLM reads fits in 64 bits; longer ones are typos or attacks
# (and Python refuses to print integers of more than 4300 digits).
INT_LIMIT = 2**63 - 1
# `${VAR}` in a number field: longer text is no number worth reading.
_LONGEST_NUMBER_TEXT = 64
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Rejection:
    message: str
    fix: str = ""


def bound(number: float) -> str:
    """604800, not 6.048e+05; 0.5 stays 0.5."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def number_hint(value: Any) -> str:
    """YAML 1.1 reads `1e3` as text: only `1.0e+3` is a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        if "e" in value.lower() and "." not in value:
            return "YAML reads an exponent without a decimal point as text: write e.g. 1.0e+3"
    return ""


def range_text(spec: Field) -> str:
    """`> 0 and <= 3600`; empty for a number without bounds."""
    low = (
        f"> {bound(spec.exclusive_minimum)}"
        if spec.exclusive_minimum is not None
        else (f">= {bound(spec.minimum)}" if spec.minimum is not None else "")
    )
    high = f"<= {bound(spec.maximum)}" if spec.maximum is not None else ""
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


def described(value: Any) -> str:
    """`a string 'x'`, `a list [3]`; a huge integer only by its size."""
    text = shown(value)
    return text if text.startswith("an integer of about") else f"{type_name(value)} {text}"


def shown(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: a message quotes values, never whole files."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        # str() of a huge integer is slow, and refused beyond 4300 digits.
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_plain_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        tuple: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)
