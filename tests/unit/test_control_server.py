"""The control API's socket and routes: the socket is 0660 from its creation (whatever the
umask), given to the configured group, a stale one is replaced and anything else refused; every
route answers a fake `ControlTarget` over a real unix socket."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from control_fakes import FakeTarget
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.control import runner as runner_module
from niodoo_supervisor.control import server as server_module
from niodoo_supervisor.control.api import STOPPING, CommandResult
from niodoo_supervisor.control.server import (
    MAX_BODY_BYTES,
    ControlServer,
    ControlServerError,
    ControlSettings,
    bind_unix_socket,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can be longer than a unix socket path may be (107 bytes).
    with tempfile.TemporaryDirectory(prefix="niodoo-ctl-") as folder:
        yield Path(folder)


# --- the socket -------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_socket_is_0660_whatever_the_umask(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    old = os.umask(0)
    try:
        sock = bind_unix_socket(path, None)
    finally:
        os.umask(old)
    with sock:
        assert stat.S_ISSOCK(path.lstat().st_mode) and _mode(path) == 0o660
    assert os.umask(old) == old  # the process umask was put back


def _another_group() -> grp.struct_group:
    """A group this process may give a file to, other than its own when it can."""
    mine = os.getegid()
    if os.geteuid() == 0:
        others = [g for g in grp.getgrall() if g.gr_gid != mine]
        if others:
            return others[0]
    allowed = [gid for gid in os.getgroups() if gid != mine] or [mine]
    return grp.getgrgid(allowed[0])


def test_the_socket_is_given_to_the_configured_group(short_dir: Path) -> None:
    group = _another_group()
    path = short_dir / "control.sock"
    with bind_unix_socket(path, group.gr_name):
        assert path.lstat().st_gid == group.gr_gid and _mode(path) == 0o660


def test_an_unknown_group_is_refused_naming_the_key(short_dir: Path) -> None:
    with pytest.raises(ControlServerError, match=r"^supervisor\.control\.group: no group named"):
        bind_unix_socket(short_dir / "control.sock", "no-such-group-niodoo")
    assert not (short_dir / "control.sock").exists()


def test_a_stale_socket_is_replaced(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a supervisor that died: the file stays, nobody listens
    refused = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with refused, pytest.raises(ConnectionRefusedError):
        refused.connect(str(path))
    with bind_unix_socket(path, None) as sock:
        assert _mode(path) == 0o660
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with client:
            client.connect(str(path))  # the new one listens
            assert sock.getsockname() == str(path)


def test_a_socket_someone_listens_on_is_not_taken_over(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(ControlServerError, match="another process serves on"):
            bind_unix_socket(path, None)
        assert stat.S_ISSOCK(path.lstat().st_mode)  # still the live one's
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))


@pytest.mark.parametrize("kind", ["file", "folder", "link"])
def test_a_path_that_is_not_a_socket_is_refused_and_left_alone(short_dir: Path, kind: str) -> None:
    path = short_dir / "control.sock"
    if kind == "file":
        path.write_text("keep me")
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(short_dir / "elsewhere")
    with pytest.raises(ControlServerError, match=r"exists and is not a socket; move it away"):
        bind_unix_socket(path, None)
    assert path.is_symlink() if kind == "link" else path.exists()
    if kind == "file":
        assert path.read_text() == "keep me"


def test_a_socket_whose_listener_never_accepts_is_refused_without_blocking(
    short_dir: Path,
) -> None:
    path = short_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
        holder.bind(str(path))
        holder.listen(0)
        queued = []
        while True:  # fill its backlog: a blocking connect() would now wait for good
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            queued.append(client)
            try:
                client.connect(str(path))
            except BlockingIOError:
                break
        try:
            with pytest.raises(ControlServerError, match=r"holds .* but does not take connections"):
                bind_unix_socket(path, None)
        finally:
            for client in queued:
                client.close()
    assert stat.S_ISSOCK(path.lstat().st_mode)  # left alone


async def test_a_site_that_fails_to_start_closes_the_socket_and_removes_the_file(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound: list[socket.socket] = []

    def binding(path: Path, group: str | None) -> socket.socket:
        bound.append(bind_unix_socket(path, group))
        return bound[-1]

    async def failing(self: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(server_module, "bind_unix_socket", binding)
    monkeypatch.setattr(web.SockSite, "start", failing)
    path = short_dir / "control.sock"
    server = ControlServer(FakeTarget(), CollectorRegistry(), ControlSettings(path))
    with pytest.raises(OSError, match="Too many open files"):
        await server.start()
    assert bound[0].fileno() == -1 and not path.exists()


def test_a_path_too_long_for_a_socket_is_refused(short_dir: Path) -> None:
    path = short_dir / ("x" * 120)
    with pytest.raises(ControlServerError, match=r"at most 107: name a shorter path"):
        bind_unix_socket(path, None)


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("0.0.0.0:9100", "0.0.0.0 is not a loopback address"),
        ("10.1.2.3:9100", "10.1.2.3 is not a loopback address"),
        ("[::]:9100", ":: is not a loopback address"),
        ("example.com:9100", "'example.com' is not an IP address"),
        ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:70000", "port '70000' is not a number from 1 to 65535"),
    ],
)
def test_a_listen_address_off_this_host_is_a_config_error(
    tmp_path: Path, listen: str, problem: str
) -> None:
    (tmp_path / "model").mkdir()
    path = tmp_path / "c.yaml"
    document = {
        "server": {"python": "python3"},
        "model": {"path": str(tmp_path / "model")},
        "supervisor": {"control": {"listen": listen, "group": "no-such-group-niodoo"}},
    }
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, {})
    assert config is None
    shown = [p.format() for p in problems]
    assert any("supervisor.control.listen" in s and problem in s for s in shown), shown
    assert any("supervisor.control.group" in s and "no group named" in s for s in shown), shown


# --- the routes -------------------------------------------------------------------------------


@pytest.fixture
async def served(short_dir: Path) -> AsyncIterator[tuple[FakeTarget, httpx.AsyncClient, Path]]:
    target = FakeTarget()
    registry = CollectorRegistry()
    Counter("niodoo_supervisor_test_total", "a test counter", registry=registry).inc(3)
    path = short_dir / "control.sock"
    server = ControlServer(target, registry, ControlSettings(path))
    await server.start()
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
        yield target, client, path
    await server.close()
    assert not path.exists()  # closed: the socket file is gone


async def test_status_and_readiness(served: tuple[FakeTarget, httpx.AsyncClient, Path]) -> None:
    target, client, _ = served
    assert (await client.get("/status")).json() == {"state": "READY", "source": "daemon"}
    ready = await client.get("/ready")
    assert (ready.status_code, ready.json()["ready"]) == (200, True)
    target.ready = (False, "draining before a planned restart")
    not_ready = await client.get("/ready")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"ready": False, "reason": "draining before a planned restart"}


async def test_metrics_are_prometheus_text(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    assert "niodoo_supervisor_test_total 3.0" in answer.text


async def test_reload_is_200_when_taken_and_409_when_refused(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    target, client, _ = served
    target.result = CommandResult(True, "taken: the config is unchanged, nothing to do")
    taken = await client.post("/reload")
    assert taken.status_code == 200 and taken.json()["message"].startswith("taken:")
    target.result = CommandResult(False, "refused: x", {"problems": ["x", "y"]})
    refused = await client.post("/reload")
    assert refused.status_code == 409
    assert refused.json() == {
        "ok": False,
        "message": "refused: x",
        "details": {"problems": ["x", "y"]},
    }


async def test_a_command_that_comes_while_stopping_is_503(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    target, client, _ = served
    target.result = CommandResult(False, STOPPING)
    answer = await client.post("/restart", params={"when": "now"})
    assert (answer.status_code, answer.json()["message"]) == (503, STOPPING)


async def test_restart_now_or_at_the_next_window(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    target, client, _ = served
    assert (await client.post("/restart")).status_code == 200
    assert (await client.post("/restart", params={"when": "now"})).status_code == 200
    assert (await client.post("/restart", params={"when": "next-window"})).status_code == 200
    bad = await client.post("/restart", params={"when": "tomorrow"})
    assert bad.status_code == 400
    assert bad.json()["message"] == "when='tomorrow': use when=now or when=next-window"
    assert target.calls == [("restart", False), ("restart", True), ("restart", False)]


async def test_adapters_list_load_and_unload(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    target, client, _ = served
    listed = await client.get("/adapters")
    assert listed.json()["details"] == {"adapters": ["a"]}
    assert (await client.post("/adapters", json={"name": "b", "path": "/srv/b"})).status_code == 200
    assert (await client.delete("/adapters/b")).status_code == 200
    target.result = CommandResult(False, "vLLM: adapter b is already loaded")
    refused = await client.post("/adapters", json={"name": "b", "path": "/srv/b"})
    assert refused.status_code == 409
    assert target.calls == [("adapters",), ("load", "b", "/srv/b"), ("unload", "b"),
                            ("load", "b", "/srv/b")]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", 'the body is not JSON: send {"name": ..., "path": ...}'),
        (b"[1, 2]", 'the body must be a JSON object: {"name": ..., "path": ...}'),
        (b'{"name": "b"}', "path: a non-empty string is required"),
        (b'{"name": " ", "path": "/x"}', "name: a non-empty string is required"),
        (
            b'{"name": "b", "path": "/x", "rank": 8}',
            "unknown field 'rank': send only name and path",
        ),
        (
            b'{"name": " b ", "path": "/x"}',
            "name: ' b ' has spaces around it: send it without them",
        ),
        (
            b'{"name": "a b", "path": "/x"}',
            "name: 'a b' contains whitespace or '=': use letters, digits, '-', '_' or '.'",
        ),
        (
            b'{"name": "a=b", "path": "/x"}',
            "name: 'a=b' contains whitespace or '=': use letters, digits, '-', '_' or '.'",
        ),
        (
            b'{"name": "' + b"n" * 256 + b'", "path": "/x"}',
            "name: 256 characters long; at most 255",
        ),
        (
            b'{"name": "b", "path": "/' + b"p" * 4096 + b'"}',
            "path: 4097 characters long; at most 4096",
        ),
        (
            b'{"name": "b", "path": "srv/b"}',
            "path: 'srv/b' is not absolute: send the adapter folder's full path",
        ),
        (b"[" * 60_000, 'the body is not JSON: send {"name": ..., "path": ...}'),
    ],
)
async def test_a_bad_adapter_request_is_400_with_one_line(
    served: tuple[FakeTarget, httpx.AsyncClient, Path], body: bytes, message: str
) -> None:
    target, client, _ = served
    answer = await client.post("/adapters", content=body)
    assert (answer.status_code, answer.json()) == (400, {"ok": False, "message": message})
    assert target.calls == []


async def test_an_adapter_name_with_a_slash_or_question_mark_reaches_unload_whole(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    target, client, _ = served
    assert (await client.delete("/adapters/org%2Fb%3Fx")).status_code == 200
    bad = await client.delete("/adapters/a%20b")
    assert bad.status_code == 400 and bad.json()["message"].startswith("name: 'a b' contains")
    assert target.calls == [("unload", "org/b?x")]


async def test_a_body_too_large_unknown_routes_and_methods_answer_json(
    served: tuple[FakeTarget, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    large = await client.post("/adapters", content=b"x" * (MAX_BODY_BYTES + 1))
    assert large.status_code == 413
    assert large.json()["message"] == f"the request body is larger than {MAX_BODY_BYTES} bytes"
    missing = await client.get("/nothing")
    assert (missing.status_code, missing.json()["message"]) == (404, "Not Found: GET /nothing")
    wrong = await client.get("/reload")
    assert wrong.status_code == 405 and wrong.json()["ok"] is False


async def test_a_failing_target_is_a_500_and_the_server_goes_on(
    served: tuple[FakeTarget, httpx.AsyncClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, client, _ = served

    async def broken() -> CommandResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(target, "reload", broken)
    answer = await client.post("/reload")
    assert (answer.status_code, answer.json()["message"]) == (
        500,
        "internal error: RuntimeError: boom",
    )
    assert (await client.get("/status")).status_code == 200


async def test_loopback_tcp_serves_only_readiness_and_metrics(short_dir: Path) -> None:
    with socket.socket() as probe:  # an OS-chosen free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ControlSettings(short_dir / "control.sock", listen=f"127.0.0.1:{port}")
    server = ControlServer(FakeTarget(), CollectorRegistry(), settings)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ready")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200
            # Every local user reaches a loopback port: the status (log lines) and commands
            # need the socket.
            assert (await client.get("/status")).status_code == 404
            assert (await client.post("/reload")).status_code == 404
            assert (await client.post("/restart")).status_code == 404
            assert (await client.get("/adapters")).status_code == 404
    finally:
        await server.close()


async def test_a_taken_tcp_port_is_a_config_error_and_leaves_no_socket(short_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        settings = ControlSettings(short_dir / "control.sock", listen=f"127.0.0.1:{port}")
        server = ControlServer(FakeTarget(), CollectorRegistry(), settings)
        with pytest.raises(
            ControlServerError, match=r"^supervisor\.control\.listen: cannot listen"
        ):
            await server.start()
    assert not (short_dir / "control.sock").exists()
    await asyncio.sleep(0)


async def test_closing_does_not_wait_on_a_command_nobody_answers(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "SHUTDOWN_GRACE", 0.2)
    target = FakeTarget()
    never: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()

    entered = asyncio.Event()

    async def hanging() -> CommandResult:
        entered.set()
        return await never

    monkeypatch.setattr(target, "reload", hanging)
    path = short_dir / "control.sock"
    server = ControlServer(target, CollectorRegistry(), ControlSettings(path))
    await server.start()
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
        asked = asyncio.ensure_future(client.post("/reload"))
        await asyncio.wait_for(entered.wait(), 30)
        await asyncio.wait_for(server.close(), 30)  # the default grace would be 60 s
        with pytest.raises(httpx.TransportError):
            await asked
    assert not path.exists()
