"""The `supervisor.control` section: where the daemon's control API listens (a unix socket,
and optionally a loopback TCP port) and which group may use it. The server itself is
`control/server.py`; the paths here are checked as any path, the group against this host."""

from __future__ import annotations

import grp
import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field

from niodoo_supervisor.config.value_types import LocalPath, Section, Text, rejected

__all__ = ["ControlSection", "loopback_address"]

_LISTEN_FIX = 'write "127.0.0.1:PORT" (or "[::1]:PORT"): the control API is for this host only'


def loopback_address(listen: str) -> tuple[str, int]:
    """`listen` as (host, port); ValueError with the reason when it is not a loopback
    address with a port."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{listen!r} is not HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not address.is_loopback:
        raise ValueError(
            f"{host} is not a loopback address: the control API takes no remote commands"
        )
    return str(address), port


def _listen(value: str) -> str:
    try:
        loopback_address(value)
    except ValueError as exc:
        raise rejected(str(exc), _LISTEN_FIX) from None
    return value


def _group(value: str) -> str:
    try:
        grp.getgrnam(value)
    except KeyError:
        raise rejected(
            f"no group named {value!r} on this host",
            "create the group (groupadd) or name an existing one, or drop the key",
        ) from None
    return value


GroupName = Annotated[Text, AfterValidator(_group)]
LoopbackListen = Annotated[Text, AfterValidator(_listen)]


class ControlSection(Section):
    """supervisor.control: the control API (`niodoo-supervisor status`, `reload`, `restart`,
    `adapters`; readiness and metrics)."""

    socket: Annotated[
        LocalPath | None,
        Field(
            description="The control API's unix socket (mode 0660). Absent: control.sock in "
            "state_dir. At most 107 bytes long."
        ),
    ] = None
    group: Annotated[
        GroupName | None,
        Field(
            description="The group the socket is given (its members may use the control API). "
            "Absent: the supervisor's own group."
        ),
    ] = None
    listen: Annotated[
        LoopbackListen | None,
        Field(
            description='Also serve the control API on this loopback TCP address ("127.0.0.1:'
            "PORT\"), e.g. for a Prometheus scraper or a load balancer's readiness check. "
            "Absent: no TCP."
        ),
    ] = None
