"""The verbs that command the running supervisor over its control socket (`reload`,
`restart`, `adapters`): each sends one request, waits for the outcome and turns it into one
line and a documented exit code."""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from typing import Any

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.control_client import ControlClient, DaemonUnreachable
from niodoo_supervisor.cli.state_location import StateLocation

__all__ = ["adapters", "reload_config", "restart"]


def reload_config(where: StateLocation) -> int:
    """Exit 0 when the new config was taken, 78 when refused (the old one keeps serving)."""
    return _command(where, "POST", "/reload", refused=exitcodes.CONFIG)


def restart(where: StateLocation, *, now: bool) -> int:
    when = "now" if now else "next-window"
    return _command(where, "POST", "/restart", params={"when": when})


def adapters(where: StateLocation, action: str, name: str | None, path: str | None) -> int:
    if action == "list":
        return _command(where, "GET", "/adapters")
    if action == "load":
        # The daemon's working folder is not the operator's: a relative PATH means this one.
        absolute = str(Path(path).resolve()) if path is not None else None
        return _command(where, "POST", "/adapters", body={"name": name, "path": absolute})
    return _command(where, "DELETE", f"/adapters/{urllib.parse.quote(name or '', safe='')}")


def _command(
    where: StateLocation,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    refused: int = exitcodes.REFUSED,
) -> int:
    try:
        with ControlClient(where.socket) as client:
            answer = client.request(method, path, params=params, body=body)
    except DaemonUnreachable as why:
        print(f"niodoo-supervisor: no supervisor answers: {why}", file=sys.stderr)
        return exitcodes.NOT_RUNNING
    if answer.status == 503:  # the supervisor is stopping: it will not carry this out
        print(f"niodoo-supervisor: {answer.message}", file=sys.stderr)
        return exitcodes.NOT_RUNNING
    if answer.status == 200:
        print(answer.message)
        return exitcodes.OK
    if answer.status == 409:
        print(answer.message, file=sys.stderr)
        details = answer.body.get("details")
        problems = details.get("problems") if isinstance(details, dict) else None
        for problem in problems[1:] if isinstance(problems, list) else []:
            print(f"  also: {problem}", file=sys.stderr)
        return refused
    print(f"niodoo-supervisor: HTTP {answer.status}: {answer.message}", file=sys.stderr)
    return exitcodes.USAGE if answer.status == 400 else exitcodes.INTERNAL
