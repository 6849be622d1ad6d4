"""The supervisor (a real process, real signals, a real notify socket) against the fake vLLM's
fault switches. Each test asserts the reaction, the states, the notifications, and that no
process of vLLM is left afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from harness import (
    REPO,
    NotifySocket,
    SupervisorRun,
    launched_pids,
    notify_socket,
    sessions_descended_from,
    start_supervisor,
    stop_supervisor,
    wait_for,
)

FAKE_PATH = REPO / "tests" / "fakevllm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_adapter(path: Path, rank: int, base: str) -> None:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": base})
    )
    (path / "adapter_model.safetensors").write_bytes(b"")


def make_config(tmp: Path, faults: str = "", **overrides: object) -> Path:
    model = tmp / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 256})
    )
    if not (tmp / "adapters").exists():
        _write_adapter(tmp / "adapters" / "a", 8, str(model))
        _write_adapter(tmp / "adapters" / "b", 16, str(model))
    config: dict[str, object] = {
        "server": {
            "python": sys.executable,
            "port": _free_port(),
            "env": {"PYTHONPATH": str(FAKE_PATH), "FAKE_VLLM_FAULTS": faults or "load_seconds=0.2"},
        },
        "model": {"path": str(model), "served_name": "tiny"},
        "lora": {
            "enabled": True,
            "max_loras": 2,
            "max_lora_rank": 16,
            "adapters": [{"name": "a", "path": "adapters/a"}, {"name": "b", "path": "adapters/b"}],
        },
        "supervisor": {
            "state_dir": str(tmp / "state"),
            "startup_timeout": 30,
            "startup_stall_timeout": 10,
            "health": {
                "interval": 0.3,
                "startup_interval": 0.1,
                "timeout": 1,
                "failure_threshold": 2,
            },
            "restart": {"initial_delay": 0.2, "max_delay": 1, "max_starts": 5, "window": 60},
            "stop": {"grace_period": 2},
            "log": {"crash_report_lines": 20},
        },
    }
    for dotted, value in overrides.items():
        node: dict[str, object] = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    path = tmp / "niodoo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


Launcher = Callable[..., SupervisorRun]


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Launcher]:
    runs: list[SupervisorRun] = []
    with notify_socket(tmp_path) as notify:

        def launch(faults: str = "", **overrides: object) -> SupervisorRun:
            config = make_config(tmp_path, faults, **overrides)
            run = start_supervisor(config, tmp_path / "state", notify, tmp_path)
            runs.append(run)
            return run

        yield launch
        for run in runs:
            stop_supervisor(run)


def _assert_nothing_left(run: SupervisorRun) -> None:
    wait_for(lambda: not sessions_descended_from(run), 10, "vLLM's processes to be gone")
    for pid in launched_pids(run):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _wait_ready_count(run: SupervisorRun, count: int) -> None:
    wait_for(lambda: run.states().count("READY") >= count, 30, f"READY number {count}")


def _status_command(run: SupervisorRun) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", "status", "-c", str(run.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _stop(run: SupervisorRun) -> int:
    run.signal(signal.SIGTERM)
    return run.wait_exit(30)


def test_ready_only_after_models_list_everything_then_clean_stop(supervise: Launcher) -> None:
    run = supervise("load_seconds=0.8")
    run.wait_state("READY", 20)
    notify: NotifySocket = run.notify
    ready = wait_for(lambda: notify.first("READY", "1"), 5, "READY=1")
    assert ready is not None
    ready_event = run.event("state_changed", new="READY")
    assert ready_event is not None
    # Progress during the start kept systemd's start timeout extended and showed the phase.
    assert notify.count("EXTEND_TIMEOUT_USEC") >= 1
    assert any("starting vLLM:" in status for status in notify.statuses())
    assert all(m.at <= ready.at for m in notify.snapshot() if "EXTEND_TIMEOUT_USEC" in m.fields)
    wait_for(lambda: notify.count("WATCHDOG") >= 3, 10, "watchdog pings while ready")
    status = run.status()
    assert status["state"] == "READY" and status["adapters"] == ["a", "b"]
    shown = _status_command(run)
    assert (
        shown.returncode == 0
        and "state:     READY" in shown.stdout
        and "adapters a, b" in shown.stdout
    )
    assert _stop(run) == 0
    shown = _status_command(run)
    assert shown.returncode == 3 and "not running (last state STOPPED)" in shown.stdout
    assert run.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    assert notify.first("STOPPING", "1") is not None
    _assert_nothing_left(run)


def test_argparse_error_is_fatal_at_once_without_restarts(supervise: Launcher) -> None:
    run = supervise("exit_at_start")
    assert run.wait_exit(20) == 78
    assert run.states() == ["STARTING", "FATAL"]
    fatal = run.event("state_changed", new="FATAL")
    assert fatal is not None and "unrecognized arguments" in fatal["reason"]
    assert len(launched_pids(run)) == 1
    assert any(s.startswith("FATAL:") for s in run.notify.statuses())
    assert run.notify.first("READY") is None
    _assert_nothing_left(run)


def test_crash_after_ready_restarts_with_backoff_and_a_crash_report(supervise: Launcher) -> None:
    run = supervise("load_seconds=0.2,crash_after=0.5")
    wait_for(lambda: run.states().count("READY") >= 2, 30, "a second READY after the crash")
    # A liveness probe may catch the dying server a moment before its exit is reaped.
    states = [state for state in run.states() if state != "UNHEALTHY"]
    assert states[:4] == ["STARTING", "READY", "BACKOFF", "STARTING"]
    backoff = run.event("state_changed", new="BACKOFF")
    assert backoff is not None and "exited with code 1" in backoff["reason"]
    report = run.event("crash_report")
    assert report is not None and "Traceback" in report["last_lines"]
    assert len(launched_pids(run)) >= 2
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_engine_death_is_acted_on_before_vllm_exits_by_itself(supervise: Launcher) -> None:
    # vLLM would exit 0 only after 30 s; the log rule and /health 503 restart it long before.
    run = supervise("load_seconds=0.2,engine_death_after=0.5,engine_death_exit_after=30")
    run.wait_state("READY", 20)
    ready_at = time.monotonic()
    wait_for(lambda: "BACKOFF" in run.states(), 10, "the restart after engine death")
    detect = time.monotonic() - ready_at
    backoff = run.event("state_changed", new="BACKOFF")
    assert backoff is not None and "engine died" in backoff["reason"] and "503" in backoff["reason"]
    assert detect < 10
    wait_for(lambda: run.states().count("READY") >= 2, 30, "READY again")
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_hung_server_is_restarted_after_the_failure_threshold(supervise: Launcher) -> None:
    run = supervise("load_seconds=0.2,hang_after=0.5")
    wait_for(lambda: run.event("state_changed", new="BACKOFF"), 30, "BACKOFF after the hang")
    assert run.states()[:4] == ["STARTING", "READY", "UNHEALTHY", "BACKOFF"]
    backoff = run.event("state_changed", new="BACKOFF")
    assert (
        backoff is not None
        and "2 failed checks in a row" in backoff["reason"]
        and "timed out" in backoff["reason"]
    )
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_stubborn_vllm_is_sigkilled_after_the_grace_period(supervise: Launcher) -> None:
    run = supervise("load_seconds=0.2,ignore_sigterm,stubborn_children")
    run.wait_state("READY", 20)
    started = time.monotonic()
    assert _stop(run) == 0
    took = time.monotonic() - started
    killed = run.event("vllm_killed")
    assert killed is not None and "VLLM::EngineCore" in killed["processes"]
    assert 2 <= took < 15  # the 2 s grace, then SIGKILL
    assert run.event("vllm_survivors") is None
    _assert_nothing_left(run)


def test_leftovers_of_a_killed_supervisor_are_ended_by_the_next(supervise: Launcher) -> None:
    first = supervise("load_seconds=0.2,stubborn_children")
    first.wait_state("READY", 20)
    wait_for(lambda: len(sessions_descended_from(first)) >= 3, 10, "engine and worker processes")
    orphans = sessions_descended_from(first)
    first.process.kill()  # the supervisor dies; vLLM and its children stay
    first.process.wait()
    assert all(psutil.pid_exists(pid) for pid in orphans)
    second = supervise("load_seconds=0.2")
    second.wait_state("READY", 30)
    found = second.event("leftovers_found")
    assert found is not None and "VLLM::EngineCore" in found["processes"]
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in orphans
    )
    assert _stop(second) == 0
    _assert_nothing_left(second)


def test_port_held_by_a_foreign_process_is_fatal_naming_it(
    supervise: Launcher, tmp_path: Path
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        run = supervise(server__port=port)
        assert run.wait_exit(20) == 78
        assert f"port {port} on 127.0.0.1 is already in use by" in run.stderr()
        assert f"(pid {os.getpid()})" in run.stderr()
        assert launched_pids(run) == []
    finally:
        holder.close()


def test_rank_above_max_is_refused_before_anything_starts(
    supervise: Launcher, tmp_path: Path
) -> None:
    _write_adapter(tmp_path / "adapters" / "wide", 64, str(tmp_path / "model"))
    started = time.monotonic()
    run = supervise(lora__adapters=[{"name": "wide", "path": "adapters/wide"}])
    assert run.wait_exit(20) == 78
    assert time.monotonic() - started < 10
    assert "adapter 'wide' has rank 64, above lora.max_lora_rank 16" in run.stderr()
    assert launched_pids(run) == []


def test_sighup_refuses_a_bad_config_and_applies_a_good_one(
    supervise: Launcher, tmp_path: Path
) -> None:
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    good = run.config.read_text()
    run.config.write_text(good.replace("max_lora_rank: 16", "max_lora_rank: 24"))
    run.signal(signal.SIGHUP)
    wait_for(lambda: run.event("reload_refused"), 20, "the reload refusal")
    assert run.states() == ["STARTING", "READY"]
    run.config.write_text(good.replace("max_loras: 2", "max_loras: 3"))
    run.signal(signal.SIGHUP)
    wait_for(lambda: run.states().count("READY") >= 2, 30, "READY with the new config")
    assert run.notify.first("RELOADING", "1") is not None
    starts = [
        r for r in run.events() if r.get("event") == "state_changed" and r.get("new") == "STARTING"
    ]
    assert len(starts) == 2
    argv = psutil.Process(launched_pids(run)[-1]).cmdline()
    assert argv[argv.index("--max-loras") + 1] == "3"
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_ready_waits_for_every_adapter_not_just_health(supervise: Launcher) -> None:
    # /health answers 200 at once but the adapters appear in /v1/models 1.5 s later.
    run = supervise("load_seconds=0.2,adapters_late=1.5")
    run.wait_state("READY", 20)
    ready = run.event("state_changed", new="READY")
    assert ready is not None

    def loaded() -> list[dict[str, str]]:
        return [r for r in run.events() if r.get("rule") == "lora_loaded"]

    # Two adapters loaded at start (then hidden), listed again 1.5 s after /health turned 200.
    wait_for(lambda: len(loaded()) == 4, 10, "the late adapter lines")
    assert loaded()[2]["timestamp"] < ready["timestamp"]
    assert float(ready["reason"].split()[2].rstrip("s")) >= 1.5
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_sigterm_does_not_wait_for_a_probe_in_flight(supervise: Launcher) -> None:
    health = {"interval": 0.3, "startup_interval": 0.1, "timeout": 30, "failure_threshold": 3}
    run = supervise("load_seconds=0.2,hang_after=0.5", supervisor__health=health)
    run.wait_state("READY", 20)
    # The server hangs; a probe with a 30 s timeout is then in flight (no check for over 2 s).
    wait_for(
        lambda: time.time() - float(run.status().get("last_check", {}).get("at", time.time())) > 2,
        20,
        "a probe stuck on the hung server",
    )
    started = time.monotonic()
    assert _stop(run) == 0
    assert time.monotonic() - started < 15  # well inside the 30 s probe timeout
    _assert_nothing_left(run)


def test_a_second_supervisor_for_the_same_state_folder_is_refused(
    supervise: Launcher, tmp_path: Path
) -> None:
    first = supervise("load_seconds=0.2")
    first.wait_state("READY", 20)
    (tmp_path / "second").mkdir()
    with notify_socket(tmp_path / "second") as notify:
        second = start_supervisor(first.config, first.state_dir, notify, tmp_path / "second")
        try:
            assert second.wait_exit(20) == 78
            assert f"supervisor pid {first.process.pid} already runs vLLM" in second.stderr()
        finally:
            stop_supervisor(second)
    assert first.status()["state"] == "READY" and first.process.poll() is None
    assert _stop(first) == 0
    _assert_nothing_left(first)


# --- notifications never block ------------------------------------------------------------------


def _unread_notify_socket(path: Path) -> socket.socket:
    """A bound notify socket that nobody reads, its queue already full (a wedged PID 1)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                filler.sendto(b"FILLER=1", str(path))
    return sock


def test_a_notify_socket_nobody_reads_does_not_stall_the_supervisor(tmp_path: Path) -> None:
    unread = _unread_notify_socket(tmp_path / "unread.sock")
    try:
        with notify_socket(tmp_path) as unused:
            run = start_supervisor(
                make_config(tmp_path, "load_seconds=0.2"),
                tmp_path / "state",
                unused,
                tmp_path,
                extra_env={"NOTIFY_SOCKET": str(tmp_path / "unread.sock")},
            )
            try:
                run.wait_state("READY", 20)

                def last_check_at() -> float:
                    return float((run.status().get("last_check") or {}).get("at", 0.0))

                first = wait_for(last_check_at, 10, "a check")
                wait_for(lambda: last_check_at() > first, 10, "a check while READY")
                dropped = run.event("notify_dropped")
                assert dropped is not None and dropped["socket"] == str(tmp_path / "unread.sock")
                # The count goes on as the checks go on (starting, READY=1, watchdog pings...).
                wait_for(lambda: run.status().get("notify_dropped", 0) >= 3, 10, "drops counted")
                assert "notifications dropped" in _status_command(run).stdout
                assert _stop(run) == 0
                assert run.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
            finally:
                stop_supervisor(run)
        _assert_nothing_left(run)
    finally:
        unread.close()


# --- the state folder is not trusted ------------------------------------------------------------


@pytest.fixture
def stranger() -> Iterator[list[psutil.Process]]:
    """An unrelated session: a `sleep` leading it and a second `sleep` in it."""
    process = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    try:
        leader = psutil.Process(process.pid)
        wait_for(lambda: leader.name() == "sleep" and leader.children(), 10, "the stranger")
        yield [leader, *leader.children()]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _identity(process: psutil.Process, *, with_exe: bool) -> dict[str, object]:
    identity: dict[str, object] = {
        "pid": process.pid,
        "create_time": process.create_time(),
        "name": process.name(),
    }
    if with_exe:
        identity["exe"] = process.exe()
    return identity


@pytest.mark.parametrize(
    ("named_as_supervisor", "with_exe"),
    [(False, False), (True, False), (True, True)],
    ids=["supervisor-gone", "live-stranger-as-supervisor", "current-format"],
)
def test_a_planted_process_record_ends_no_stranger_and_blocks_no_start(
    supervise: Launcher,
    tmp_path: Path,
    stranger: list[psutil.Process],
    named_as_supervisor: bool,
    with_exe: bool,
) -> None:
    leader, member = stranger
    state = tmp_path / "state"
    state.mkdir()
    (state / "vllm-processes.json").write_text(
        json.dumps(
            {
                "supervisor_pid": leader.pid,
                "supervisor_create_time": leader.create_time() if named_as_supervisor else 1.0,
                "sid": leader.pid,
                "leader": _identity(leader, with_exe=with_exe),
                "members": [_identity(member, with_exe=with_exe)],
                "boot_time": psutil.boot_time(),
            }
        )
    )
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    assert leader.is_running() and member.is_running()
    assert run.event("leftovers_found") is None
    assert _stop(run) == 0
    assert leader.is_running() and member.is_running()
    _assert_nothing_left(run)


def test_an_oddly_typed_state_file_is_ignored_and_replaced(
    supervise: Launcher, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    planted = {"supervisor_pid": 1, "sid": 1, "leader": {"pid": "x", "create_time": 1.0}}
    (state / "vllm-processes.json").write_text(
        json.dumps({**planted, "boot_time": psutil.boot_time()})
    )
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    ignored = run.event("state_file_ignored")
    assert ignored is not None and ignored["file"] == str(state / "vllm-processes.json")
    record = json.loads((state / "vllm-processes.json").read_text())
    assert record["leader"]["pid"] == launched_pids(run)[0]
    assert _stop(run) == 0
    _assert_nothing_left(run)


def _links_to_a_victim(tmp_path: Path, *names: str) -> tuple[Path, Path]:
    """The state folder with `names` planted as links to one file outside it (the victim)."""
    state, victim = tmp_path / "state", tmp_path / "victim.txt"
    state.mkdir()
    victim.write_text("precious\n")
    for name in names:
        (state / name).symlink_to(victim)
    return state, victim


def test_links_in_the_state_folder_are_not_followed(supervise: Launcher, tmp_path: Path) -> None:
    state, victim = _links_to_a_victim(tmp_path, "vllm-logging.json", "status.json")
    run = supervise("load_seconds=0.2")
    run.wait_state("READY", 20)
    assert victim.read_text() == "precious\n"
    for name in ("vllm-logging.json", "status.json"):  # replaced by a file of our own
        assert not (state / name).is_symlink() and (state / name).stat().st_size > 0
    assert (state / "status.json").stat().st_mode & 0o777 == 0o640
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_a_log_file_that_is_a_link_is_refused(supervise: Launcher, tmp_path: Path) -> None:
    state, victim = _links_to_a_victim(tmp_path, "vllm.log")
    run = supervise("load_seconds=0.2")
    assert run.wait_exit(20) == 78
    assert f"supervisor.log.path: {state / 'vllm.log'} is a symbolic link" in run.stderr()
    assert victim.read_text() == "precious\n" and launched_pids(run) == []


def test_a_state_folder_its_group_can_write_is_refused(supervise: Launcher, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o775)
    run = supervise("load_seconds=0.2")
    assert run.wait_exit(20) == 78
    refused = run.event("state_dir_refused")
    assert refused is not None and refused["problem"].endswith(f"fix: chmod go-w {state}")
    assert launched_pids(run) == [] and "Traceback" not in run.stderr()
    assert len(run.stderr().splitlines()) == 1


# --- a full disk at the first start is temporary -------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs with the given options (root only), unmounted afterwards."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()


@pytest.mark.parametrize("full", ["space", "inodes"])
def test_a_full_disk_at_the_first_start_is_temporary(
    supervise: Launcher, tiny_tmpfs: Callable[[str], Path], full: str
) -> None:
    if full == "space":
        disk = tiny_tmpfs("size=64k")
        _fill(disk)
    else:
        disk = tiny_tmpfs("size=1m,nr_inodes=1")  # the root folder takes the only inode
    run = supervise("load_seconds=0.2", supervisor__state_dir=str(disk / "state"))
    assert run.wait_exit(20) == 75
    assert "No space left on device" in run.stderr() and "Traceback" not in run.stderr()
    assert launched_pids(run) == []


# --- signals before the main loop ---------------------------------------------------------------


def _supervise_held_in_preflight(supervise: Launcher, tmp: Path) -> tuple[SupervisorRun, Path]:
    """The supervisor with a `server.python` that, asked for vLLM's version (`-c`, preflight),
    waits until the returned path exists (at most 30 s); otherwise it is this Python. Returns
    once preflight is held there."""
    wrapper, asked, release = tmp / "python-held", tmp / "asked", tmp / "release"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ]; then\n'
        f"  touch '{asked}'; i=0\n"
        f"  while [ ! -e '{release}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
        "fi\n"
        f"exec '{sys.executable}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    run = supervise("load_seconds=0.2", server__python=str(wrapper))
    wait_for(asked.exists, 20, "preflight asking vLLM's interpreter")
    return run, release


def test_sighup_during_preflight_is_applied_before_the_first_start(
    supervise: Launcher, tmp_path: Path
) -> None:
    run, release = _supervise_held_in_preflight(supervise, tmp_path)
    run.config.write_text(run.config.read_text().replace("max_loras: 2", "max_loras: 3"))
    run.signal(signal.SIGHUP)
    release.touch()
    run.wait_state("READY", 30)
    assert run.event("reload_requested") is not None
    assert len(launched_pids(run)) == 1  # the new config applied before the start, not after
    argv = psutil.Process(launched_pids(run)[0]).cmdline()
    assert argv[argv.index("--max-loras") + 1] == "3"
    assert _stop(run) == 0
    _assert_nothing_left(run)


def test_sigterm_during_preflight_ends_the_start_cleanly(
    supervise: Launcher, tmp_path: Path
) -> None:
    run, release = _supervise_held_in_preflight(supervise, tmp_path)
    run.signal(signal.SIGTERM)
    release.touch()
    assert run.wait_exit(20) == 0
    assert run.event("stopped_before_start", signal="SIGTERM") is not None
    assert launched_pids(run) == []


def test_a_field_name_spoofing_a_fatal_line_while_starting_is_only_counted(
    supervise: Launcher,
) -> None:
    # The server answers requests while the supervisor still waits for the adapters to be
    # listed: the window in which a spoofed fatal line used to end the service (exit 78).
    run = supervise("load_seconds=0.2,adapters_late=4")
    port = int(yaml.safe_load(run.config.read_text())["server"]["port"])
    base = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(serving, 20, "the fake vLLM to serve requests")
    assert "READY" not in run.states()
    spoof = "LoRA rank 99 is greater than max_lora_rank 16"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], spoof: 1}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10, trust_env=False)
    assert response.status_code == 200
    event = wait_for(
        lambda: run.event("vllm_event", rule="ignored_request_fields"), 10, "the ignored field"
    )
    assert event is not None
    run.wait_state("READY", 20)
    records, ready = run.events(), run.event("state_changed", new="READY")
    assert ready is not None and records.index(event) < records.index(ready)
    assert run.states() == ["STARTING", "READY"]  # no FATAL, no restart
    assert not [r for r in records if r.get("event") == "vllm_event" and "lora_rank" in r["rule"]]
    fields = wait_for(lambda: run.status().get("events", {}).get("ignored_fields"), 10, "counts")
    assert fields == {spoof: 1}
    assert _stop(run) == 0
    _assert_nothing_left(run)
