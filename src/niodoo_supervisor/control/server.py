"""The control API: an aiohttp application serving a `ControlTarget` on a unix socket (mode
0660, optionally given to a group) and, when configured, on a loopback TCP port, inside the
supervisor's own event loop (`AppRunner(handle_signals=False)`: the loop's signal handlers
stay the supervisor's).

Routes (JSON unless said): GET /status, GET /ready (200 or 503 with the reason), GET /metrics
(Prometheus text), POST /reload (200 taken, 409 refused, 503 when the supervisor is stopping),
POST /restart?when=now|next-window,
GET /adapters, POST /adapters {"name", "path"}, DELETE /adapters/{name}. A bad request is a
400 with one line saying what is wrong; every error answers `{"ok": false, "message": ...}`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.engine_sections import adapter_name_is_valid
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.metrics_sections import parse_listen
from niodoo_supervisor.control.api import STOPPING, CommandResult, ControlTarget
from niodoo_supervisor.control.runner import app_runner, metrics_handler

__all__ = ["SOCKET_MODE", "ControlServer", "ControlServerError", "ControlSettings", "control_app"]

log = structlog.get_logger("niodoo_supervisor")

SOCKET_MODE = 0o660
MAX_BODY_BYTES = 64 * 1024  # a command is a few names and a path
MAX_NAME_CHARS = 255
MAX_PATH_CHARS = 4096  # PATH_MAX
_PROBE_TIMEOUT = 1.0  # a listener whose backlog is full would block connect() for good
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL
_RESTART_WHEN = {"now": True, "next-window": False}
_TARGET: web.AppKey[ControlTarget] = web.AppKey("target", ControlTarget)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlServerError(Exception):
    """The control API cannot listen where the config says: one line naming the key and the
    fix, and the exit code the supervisor ends with."""

    def __init__(self, message: str, exit_code: int = exitcodes.CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ControlSettings:
    socket: Path
    group: str | None = None
    listen: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> ControlSettings:
        control = config.supervisor.control
        return cls(config.control_socket, control.group, control.listen)


def control_app(
    target: ControlTarget, registry: CollectorRegistry, *, commands: bool = True
) -> web.Application:
    """The API; without `commands`, only /ready and /metrics: what a loopback TCP port, open
    to every local user, may serve (/status quotes log lines, which may quote requests)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
    app[_TARGET] = target
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", metrics_handler(registry))
    if not commands:
        return app
    app.router.add_get("/status", _status)
    app.router.add_post("/reload", _reload)
    app.router.add_post("/restart", _restart)
    app.router.add_get("/adapters", _adapters)
    app.router.add_post("/adapters", _load_adapter)
    app.router.add_delete("/adapters/{name}", _unload_adapter)
    return app


class ControlServer:
    """The control API listening: `start` before vLLM's first launch, `close` at exit (the
    socket file goes with it)."""

    def __init__(
        self, target: ControlTarget, registry: CollectorRegistry, settings: ControlSettings
    ) -> None:
        self.settings = settings
        self._runner = app_runner(control_app(target, registry))
        self._tcp_runner: web.AppRunner | None = None
        if settings.listen is not None:
            self._tcp_runner = app_runner(control_app(target, registry, commands=False))
        self._bound: os.stat_result | None = None  # the socket file this server made

    async def start(self) -> None:
        sock = bind_unix_socket(self.settings.socket, self.settings.group)
        self._bound = self.settings.socket.stat()
        try:
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()  # a site that never started does not own it
            await self.close()
            raise
        try:
            if self._tcp_runner is not None and self.settings.listen is not None:
                await self._start_tcp(self._tcp_runner, self.settings.listen)
        except BaseException:
            await self.close()
            raise
        log.info("control_listening", socket=str(self.settings.socket), listen=self.settings.listen)

    async def _start_tcp(self, runner: web.AppRunner, listen: str) -> None:
        host, port = parse_listen(listen)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ControlServerError(
                f"supervisor.control.listen: cannot listen on {listen}: {exc.strerror or exc}; "
                "name a free port or drop the key"
            ) from None

    async def close(self) -> None:
        if self._tcp_runner is not None:
            await self._tcp_runner.cleanup()
        await self._runner.cleanup()
        bound, self._bound = self._bound, None
        if bound is not None:
            with contextlib.suppress(OSError):
                now = self.settings.socket.lstat()
                if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):  # still ours
                    self.settings.socket.unlink()


def bind_unix_socket(path: Path, group: str | None) -> socket.socket:
    """A listening unix socket at `path`, mode 0660 from its creation (and given to `group`).
    A stale socket (nobody accepts on it) is replaced; anything else at `path` is refused."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ControlServerError(
            f"supervisor.control.socket: {path} is {len(os.fsencode(path))} bytes long; a unix "
            f"socket path holds at most {_MAX_SOCKET_PATH}: name a shorter path"
        )
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~SOCKET_MODE)  # never wider than 0660, not even briefly
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
    except OSError as exc:
        sock.close()
        raise ControlServerError(
            f"supervisor.control.socket: cannot create {path}: {exc.strerror or exc}; "
            "name a path in a folder the service user may write"
        ) from None
    try:
        _finish(sock, path, group)
    except BaseException as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(exc, OSError):
            raise ControlServerError(
                f"supervisor.control.socket: cannot set up {path}: {exc.strerror or exc}"
            ) from None
        raise
    return sock


def _finish(sock: socket.socket, path: Path, group: str | None) -> None:
    path.chmod(SOCKET_MODE)
    if group is not None:
        _give_to_group(path, group)
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode != SOCKET_MODE:
        raise ControlServerError(
            f"supervisor.control.socket: {path} has mode {mode:04o}, not 0660; "
            "the file system does not keep modes: name a path on another one"
        )
    sock.listen(128)
    sock.setblocking(False)


def _remove_stale(path: Path) -> None:
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlServerError(
            f"supervisor.control.socket: cannot look at {path}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISSOCK(found.st_mode):
        raise ControlServerError(
            f"supervisor.control.socket: {path} exists and is not a socket; "
            "move it away or name another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except (TimeoutError, BlockingIOError):  # its queue is full (EAGAIN), or it is stuck
        raise ControlServerError(
            f"supervisor.control.socket: another process holds {path} but does not take "
            "connections; stop it or name another path"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlServerError(
                f"supervisor.control.socket: cannot check {path}: {exc.strerror or exc}"
            ) from None
    else:
        raise ControlServerError(
            f"supervisor.control.socket: another process serves on {path}; "
            "stop it or name another path"
        )
    finally:
        probe.close()
    path.unlink()  # a socket left by a supervisor that died: nobody listens on it


def _give_to_group(path: Path, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlServerError(
            f"supervisor.control.group: no group named {group!r} on this host; "
            "create it or name an existing one"
        ) from None
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        raise ControlServerError(
            f"supervisor.control.group: the service user may not give {path} to group "
            f"{group!r}: make it a member (SupplementaryGroups=) or drop the key"
        ) from None


# --- the routes -----------------------------------------------------------------------------


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return _error(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        return _error(exc.status, f"{exc.reason}: {request.method} {request.path}")
    except Exception as exc:  # a bug behind the API must not take the supervisor down
        log.exception("control_request_failed", path=request.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "message": message}, status=status)


class _BadRequest(Exception):
    """A request the API cannot take: answered 400 with this one line."""


def _answer(result: CommandResult) -> web.Response:
    """200 when the command was carried out, 409 when it was refused, 503 when it came too
    late: the supervisor is stopping."""
    status = 200 if result.ok else 503 if result.message == STOPPING else 409
    return web.json_response(asdict(result), status=status)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[_TARGET].status(), dumps=_dumps)


async def _ready(request: web.Request) -> web.Response:
    ready, reason = request.app[_TARGET].readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def _reload(request: web.Request) -> web.Response:
    return _answer(await request.app[_TARGET].reload())


async def _restart(request: web.Request) -> web.Response:
    when = request.query.get("when", "next-window")
    if when not in _RESTART_WHEN:
        raise _BadRequest(f"when={when!r}: use when=now or when=next-window")
    return _answer(await request.app[_TARGET].restart(now=_RESTART_WHEN[when]))


async def _adapters(request: web.Request) -> web.Response:
    return _answer(await request.app[_TARGET].adapters())


async def _load_adapter(request: web.Request) -> web.Response:
    body = await _json_object(request)
    unknown = sorted(set(body) - {"name", "path"})
    if unknown:
        raise _BadRequest(f"unknown field {unknown[0]!r}: send only name and path")
    name = _adapter_name(_text_field(body, "name"))
    path = _adapter_path(_text_field(body, "path"))
    return _answer(await request.app[_TARGET].load_adapter(name, path))


async def _unload_adapter(request: web.Request) -> web.Response:
    name = _adapter_name(request.match_info["name"])
    return _answer(await request.app[_TARGET].unload_adapter(name))


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: a body nested thousands deep
        raise _BadRequest('the body is not JSON: send {"name": ..., "path": ...}') from None
    if not isinstance(body, dict):
        raise _BadRequest('the body must be a JSON object: {"name": ..., "path": ...}')
    return body


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _BadRequest(f"{name}: a non-empty string is required")
    if value != value.strip():
        raise _BadRequest(f"{name}: {value!r} has spaces around it: send it without them")
    return value


def _adapter_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS:
        raise _BadRequest(f"name: {len(name)} characters long; at most {MAX_NAME_CHARS}")
    if not adapter_name_is_valid(name):
        raise _BadRequest(
            f"name: {name!r} contains whitespace or '=': use letters, digits, '-', '_' or '.'"
        )
    return name


def _adapter_path(path: str) -> str:
    if len(path) > MAX_PATH_CHARS:
        raise _BadRequest(f"path: {len(path)} characters long; at most {MAX_PATH_CHARS}")
    if not path.startswith("/"):
        raise _BadRequest(f"path: {path!r} is not absolute: send the adapter folder's full path")
    return path


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)
