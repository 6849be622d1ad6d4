"""The verbs that talk to the daemon: `status` asks it first and falls back to status.json
(saying so), and works without a valid config; `reload`, `restart` and `adapters` wait for
the outcome and exit with the documented codes. The daemon here is the real control server
serving a fake target on a socket in a temporary folder."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from control_fakes import FakeTarget
from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.control.api import STOPPING, CommandResult
from niodoo_supervisor.control.server import ControlServer, ControlSettings
from niodoo_supervisor.supervise.status_file import STATUS_FILE, StatusBoard


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="niodoo-cli-") as folder:  # short: a socket lives here
        yield Path(folder)


@pytest.fixture
async def daemon(state_dir: Path) -> AsyncIterator[FakeTarget]:
    target = FakeTarget()
    server = ControlServer(target, CollectorRegistry(), ControlSettings(state_dir / "control.sock"))
    await server.start()
    yield target
    await server.close()


async def _cli(*argv: str) -> int:
    """The CLI in a thread: its client blocks, the server answers in this loop."""
    return await asyncio.to_thread(main, list(argv))


def _write_status(state_dir: Path, **fields: object) -> None:
    board = StatusBoard(state="READY")
    (state_dir / STATUS_FILE).write_text(json.dumps({**board.to_dict(), **fields}))


def _broken_config(tmp_path: Path, state_dir: Path) -> Path:
    """A config that does not validate in this shell: server.python names an unset variable."""
    path = tmp_path / "niodoo.yaml"
    document = {
        "server": {"python": "${NIODOO_TEST_UNSET_PYTHON}"},
        "model": {"path": "/nonexistent"},
        "supervisor": {"state_dir": str(state_dir)},
    }
    path.write_text(yaml.safe_dump(document))
    return path


# --- status -----------------------------------------------------------------------------------


async def test_status_asks_the_daemon_first(
    daemon: FakeTarget, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_status(state_dir, state="STARTING")  # older than what the daemon says
    assert await _cli("status", "--state-dir", str(state_dir), "--json") == exitcodes.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"] == "daemon" and shown["state"] == "READY" and shown["notes"] == []


def test_status_falls_back_to_the_file_and_says_so_when_nothing_listens(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(state_dir / "control.sock"))
    dead.close()  # a socket file nobody listens on
    _write_status(state_dir)
    assert main(["status", "--state-dir", str(state_dir), "--json"]) == exitcodes.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"] == STATUS_FILE
    (note,) = shown["notes"]
    assert note.startswith(f"daemon not answering (nothing listens on {state_dir}/control.sock)")
    assert "; from status.json written at " in note


def test_status_works_when_the_config_does_not_validate(
    tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_status(state_dir)
    config = _broken_config(tmp_path, state_dir)
    assert main(["status", "-c", str(config)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "note:      the config does not load (" in out and "NIODOO_TEST_UNSET_PYTHON" in out
    assert "only its state_dir was read" in out
    assert "state:     READY since " in out


def test_status_says_a_refused_reload_left_the_previous_config_serving(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = {"at": 1.0, "ok": False, "summary": "refused: a", "problems": ["a: bad", "b: worse"]}
    _write_status(state_dir, last_reload=refused)
    main(["status", "--state-dir", str(state_dir)])
    out = capsys.readouterr().out
    assert "reload:    serving the previous config; the new one was refused: a: bad (" in out
    assert "           also: b: worse" in out


@pytest.mark.parametrize(
    ("verb", "said"),
    [
        ("status", "not running: no control socket at {dir}/control.sock, and no status in {dir}"),
        (
            "reload",
            "niodoo-supervisor: no supervisor answers: no control socket at {dir}/control.sock",
        ),
    ],
)
def test_without_a_daemon_the_verbs_say_not_running(
    state_dir: Path, capsys: pytest.CaptureFixture[str], verb: str, said: str
) -> None:
    assert main([verb, "--state-dir", str(state_dir)]) == exitcodes.NOT_RUNNING
    captured = capsys.readouterr()
    assert captured.out + captured.err == said.format(dir=state_dir) + "\n"


# --- reload, restart, adapters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        ("reload", CommandResult(True, "taken: the config is unchanged"), exitcodes.OK),
        ("restart", CommandResult(True, "restart pending until sun 02:00"), exitcodes.OK),
        ("restart", CommandResult(False, "no window configured"), exitcodes.REFUSED),
    ],
)
async def test_a_command_prints_its_outcome_and_exits_with_its_code(
    daemon: FakeTarget,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, CommandResult, int],
) -> None:
    verb, result, code = case
    daemon.result = result
    assert await _cli(verb, "--state-dir", str(state_dir)) == code
    captured = capsys.readouterr()
    assert (captured.out if result.ok else captured.err) == result.message + "\n"
    assert daemon.calls[0][0] == verb


async def test_reload_exits_78_when_refused_naming_every_problem(
    daemon: FakeTarget, tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.result = CommandResult(
        False,
        "refused, the running config stays: a: bad (and 1 more)",
        {"problems": ["a: bad", "b"]},
    )
    # The config named is only where to find the socket: it need not be valid.
    config = _broken_config(tmp_path, state_dir)
    assert await _cli("reload", "-c", str(config)) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert err == "refused, the running config stays: a: bad (and 1 more)\n  also: b\n"


@pytest.mark.parametrize(
    ("flags", "now"), [((), False), (("--at-next-window",), False), (("--now",), True)]
)
async def test_restart_now_or_at_the_next_window(
    daemon: FakeTarget, state_dir: Path, flags: tuple[str, ...], now: bool
) -> None:
    assert await _cli("restart", "--state-dir", str(state_dir), *flags) == exitcodes.OK
    assert daemon.calls == [("restart", now)]


async def test_adapters_list_load_and_unload(
    daemon: FakeTarget, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--state-dir", str(state_dir))
    assert await _cli("adapters", *where, "list") == exitcodes.OK
    assert await _cli("adapters", *where, "load", "b", "/srv/b") == exitcodes.OK
    assert await _cli("adapters", *where, "unload", "b") == exitcodes.OK
    assert daemon.calls == [("adapters",), ("load", "b", "/srv/b"), ("unload", "b")]
    assert capsys.readouterr().out.splitlines()[0] == "tiny + adapters a"


@pytest.mark.parametrize("verb", [("reload",), ("restart",), ("adapters", "unload", "b")])
async def test_a_command_that_comes_while_stopping_exits_not_running(
    daemon: FakeTarget, state_dir: Path, capsys: pytest.CaptureFixture[str], verb: tuple[str, ...]
) -> None:
    daemon.result = CommandResult(False, STOPPING)
    assert await _cli(verb[0], "--state-dir", str(state_dir), *verb[1:]) == exitcodes.NOT_RUNNING
    assert capsys.readouterr().err == f"niodoo-supervisor: {STOPPING}\n"


async def test_adapter_names_are_sent_url_encoded_and_paths_absolute(
    daemon: FakeTarget, state_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    where = ("--state-dir", str(state_dir))
    assert await _cli("adapters", *where, "unload", "org/b?x#y") == exitcodes.OK
    assert await _cli("adapters", *where, "load", "org/b", "adapters/b") == exitcodes.OK
    assert daemon.calls == [
        ("unload", "org/b?x#y"),
        ("load", "org/b", str(tmp_path.resolve() / "adapters" / "b")),
    ]


def test_the_verbs_are_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("status", "reload", "restart", "adapters"))
