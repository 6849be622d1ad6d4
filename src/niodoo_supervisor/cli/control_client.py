"""The CLI's side of the control API: HTTP over the daemon's unix socket (httpx), each answer
as its status code and JSON body; a daemon that does not answer is `DaemonUnreachable`,
worded for the operator."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ControlAnswer", "ControlClient", "DaemonUnreachable"]

CONNECT_TIMEOUT = 2.0
# A reload runs preflight, which can take minutes when vLLM's flags are not cached yet.
COMMAND_TIMEOUT = 900.0


class DaemonUnreachable(Exception):
    """Nothing answers on the socket (no supervisor, or not this user's to reach)."""


@dataclass(frozen=True)
class ControlAnswer:
    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


class ControlClient:
    def __init__(self, socket: Path, timeout: float = COMMAND_TIMEOUT) -> None:
        self.socket = socket
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)),
            base_url="http://niodoo-supervisor",
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> ControlAnswer:
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            raise DaemonUnreachable(
                f"the supervisor did not answer on {self.socket} in time"
            ) from None
        except httpx.TransportError as exc:
            raise DaemonUnreachable(_why(self.socket, exc)) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {"message": response.text.strip()[:200]}
        if not isinstance(answer, dict):
            answer = {"message": json.dumps(answer)[:200]}
        return ControlAnswer(response.status_code, answer)


def _why(socket: Path, exc: httpx.TransportError) -> str:
    cause = exc.__context__ or exc.__cause__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__ or cause.__cause__
    code = cause.errno if isinstance(cause, OSError) else None
    if code == errno.ENOENT:
        return f"no control socket at {socket}"
    if code == errno.ECONNREFUSED:
        return f"nothing listens on {socket}"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to use {socket}: join the group that owns it, or use sudo"
    return f"cannot reach {socket}: {exc}"
