"""The `supervisor.metrics` section (the Prometheus metrics) and its loopback address."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from niodoo_supervisor.config.drain_sections import split_listen
from niodoo_supervisor.config.value_types import Int, Section, Text, rejected

__all__ = ["MetricsSection", "loopback_listen", "parse_listen"]

_LISTEN_FIX = (
    'write "127.0.0.1:PORT" or "[::1]:PORT" (loopback only: scrape from elsewhere through '
    "a proxy), or leave it out"
)


def parse_listen(text: str) -> tuple[str, int]:
    """ "HOST:PORT" with a loopback IP as HOST (IPv6 in brackets) -> (host, port); ValueError
    saying what is wrong otherwise."""
    host, port = split_listen(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    return host, port


def loopback_listen(value: str, fix: str = _LISTEN_FIX) -> str:
    """A config validator: `value` when `parse_listen` takes it, else the problem and `fix`."""
    try:
        parse_listen(value)
    except ValueError as exc:
        raise rejected(str(exc), fix) from None
    return value


class MetricsSection(Section):
    """supervisor.metrics: the Prometheus metrics."""

    listen: Annotated[
        Text | None,
        AfterValidator(lambda value: None if value is None else loopback_listen(value)),
        WithJsonSchema({"type": "string", "minLength": 1}),
        Field(
            description='A loopback address, "127.0.0.1:PORT" or "[::1]:PORT", where GET '
            "/metrics is served over plain HTTP for Prometheus (nothing else is served "
            "there). Absent: no TCP port. Read when the supervisor starts.",
        ),
    ] = None
    ignored_fields_top: Annotated[
        Int,
        Field(
            ge=1,
            le=1_000,
            description="Ignored request fields, whose names clients choose, get a label of "
            "their own for the first this many distinct names; the rest count as `(other)`. "
            "Read when the supervisor starts.",
        ),
    ] = 20
