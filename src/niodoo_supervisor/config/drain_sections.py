"""The `drain` section: how a planned restart or stop takes traffic away from vLLM first.

A stop marks the supervisor not-ready (its readiness endpoints answer 503), waits
`drain.announce` seconds so that load balancers polling them stop sending, then SIGTERMs vLLM,
which refuses new requests and finishes running ones for up to `drain.timeout` seconds
(`--shutdown-timeout`; vLLM's `/health` stays 200 meanwhile, so only the supervisor can say
"not ready"). The sequence itself is `supervise/drain.py`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field

from niodoo_supervisor.config.fields import VllmFlag
from niodoo_supervisor.config.value_types import Int, Number, Section, Text, rejected
from niodoo_supervisor.config.versions import Version

__all__ = ["DEFAULT_ANNOUNCE_WITH_LISTENER", "DrainSection", "split_listen"]

# How long a load balancer needs to see 503 and take a backend out: two failed polls at a
# common 2-5 s interval (HAProxy `inter 2s fall 3`, Kubernetes readiness periodSeconds 5).
DEFAULT_ANNOUNCE_WITH_LISTENER = 10.0
_LISTEN_FIX = "write HOST:PORT, e.g. 127.0.0.1:8081 or [::1]:8081"


def split_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ValueError says what is wrong."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # ValueError names the address
    elif ":" in host:
        raise ValueError(f"the IPv6 address in {text!r} must be in brackets")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _listen(value: str) -> str:
    try:
        split_listen(value)
    except ValueError as exc:
        raise rejected(str(exc), _LISTEN_FIX) from None
    return value


class DrainSection(Section):
    """drain: taking traffic away from vLLM before a planned restart or stop."""

    timeout: Annotated[
        Int | None,
        Field(
            ge=0,
            description="Seconds vLLM finishes in-flight requests after its SIGTERM, refusing "
            "new ones (0 aborts them). A stop waits at least this + 10 s, whatever "
            "supervisor.stop.grace_period says. Absent: vLLM's default, 0. 30 suits most "
            "chat traffic.",
        ),
        VllmFlag("--shutdown-timeout", since=Version(0, 18, 0), vllm_default=0),
    ] = None
    announce: Annotated[
        Number | None,
        Field(
            ge=0.0,
            le=3600.0,
            description="Seconds the supervisor answers not-ready (503 on its readiness "
            "endpoints) before it SIGTERMs vLLM, so load balancers stop sending first; a stop "
            "asked meanwhile cuts it short, and a vLLM never ready is not waited for. Absent: "
            f"{DEFAULT_ANNOUNCE_WITH_LISTENER:g} when a load balancer can poll a readiness "
            "endpoint (drain.readiness_listen or supervisor.control.listen is set), else 0.",
        ),
    ] = None
    readiness_listen: Annotated[
        Text | None,
        AfterValidator(_listen),
        Field(
            description="HOST:PORT of a plain HTTP readiness endpoint for a load balancer: "
            "GET /ready answers 200 while vLLM is ready and not draining, else 503; nothing "
            "else is served. Absent: none. Read once at the supervisor's start.",
        ),
    ] = None
