"""The `supervisor.control` section: where the daemon's control API listens (a unix socket,
and optionally a loopback TCP port) and which group may use it. The server itself is
`control/server.py`; the paths here are checked as any path, the group against this host."""

from __future__ import annotations

import grp
from typing import Annotated

from pydantic import AfterValidator, Field

from niodoo_supervisor.config.metrics_sections import loopback_listen
from niodoo_supervisor.config.value_types import LocalPath, Section, Text, rejected

__all__ = ["ControlSection"]

_LISTEN_FIX = 'write "127.0.0.1:PORT" (or "[::1]:PORT"): the control API is for this host only'


def _listen(value: str) -> str:
    return loopback_listen(value, _LISTEN_FIX)


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
            description="Also serve the control API's read-only routes (/status, /ready, "
            '/metrics) on this loopback TCP address ("127.0.0.1:PORT"), e.g. for a load '
            "balancer's readiness check; commands need the socket. Absent: no TCP."
        ),
    ] = None
