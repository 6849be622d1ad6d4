"""vLLM's port: preflight's check that it is free, naming who holds it when it is not.

`port_holder` tries to bind the address the way vLLM's server (uvicorn) will, and when it is
taken looks up the listening process with psutil, as far as this user may see it. A port held
by this state folder's own vLLM (`check` while the supervisor serves) is no problem.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import psutil

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.relations import Report

__all__ = ["OwnListener", "check_port", "port_holder"]

# Who holds a taken port, when it is this state folder's own vLLM: given the listener's pid,
# a description ("this supervisor's own vLLM (pid 5, running since ...)"), else None.
OwnListener = Callable[[int], "str | None"]


def check_port(config: Config, report: Report, own_listener: OwnListener | None) -> str | None:
    """Reports a port vLLM could not listen on; returns the note naming our own vLLM when it
    is the one holding it."""
    host, port = config.host, config.port
    try:
        holder = port_holder(host, port)
    except OSError as exc:
        report(
            "server.host",
            f"vLLM could not listen on {host}:{port}: {exc.strerror}",
            "use an address of this machine, or 0.0.0.0",
        )
        return None
    if holder is None:
        return None
    pid, name = holder
    ours = own_listener(pid) if own_listener is not None and pid is not None else None
    if ours is not None:
        return f"port {port} is served by {ours}"
    who = (
        f"{name} (pid {pid})"
        if pid is not None
        else "a process this user cannot see (run check as its user or root to name it)"
    )
    report(
        "server.port",
        f"port {port} on {host} is already in use by {who}",
        "stop it or choose another server.port",
    )
    return None


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
