"""Who is listening on a TCP port of this host: preflight names it when vLLM's port is taken.

`port_holder` tries to bind the address the way vLLM's server (uvicorn) will, and when it is
taken looks up the listening process with psutil, as far as this user may see it.
"""

from __future__ import annotations

import errno
import socket

import psutil

__all__ = ["port_holder"]


def port_holder(host: str, port: int) -> tuple[int | None, str] | None:
    """None when `host:port` can be bound now; else the (pid, name) listening on it, as far
    as this user may know. Raises OSError when the address cannot be bound for another reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option uvicorn sets, so TIME_WAIT leftovers do not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        else:
            return None
    return _listener_of(port)


def _listener_of(port: int) -> tuple[int | None, str]:
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return (None, "an unknown process")
    for conn in connections:
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.pid
        ):
            try:
                return (conn.pid, psutil.Process(conn.pid).name())
            except psutil.Error:
                return (conn.pid, "an exited process")
    return (None, "an unknown process")
