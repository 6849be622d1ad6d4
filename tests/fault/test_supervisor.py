"""The supervisor (a real process, real signals, a real notify socket) against the fake vLLM's
fault switches. Each test asserts the reaction, the states, the notifications, and that no
process of vLLM is left afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

from fault_supervisor import (
    Launcher,
    assert_nothing_left,
    make_config,
    status_command,
    stop,
    write_adapter,
)
from harness import (
    NotifySocket,
    SupervisorRun,
    launched_pids,
    notify_socket,
    sessions_descended_from,
    start_supervisor,
    stop_supervisor,
    wait_for,
)


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
    shown = status_command(run)
    assert (
        shown.returncode == 0
        and "state:     READY" in shown.stdout
        and "adapters a, b" in shown.stdout
    )
    assert stop(run) == 0
    shown = status_command(run)
    assert shown.returncode == 3 and "not running (last state STOPPED)" in shown.stdout
    assert run.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
    assert notify.first("STOPPING", "1") is not None
    assert_nothing_left(run)


def test_argparse_error_is_fatal_at_once_without_restarts(supervise: Launcher) -> None:
    run = supervise("exit_at_start")
    assert run.wait_exit(20) == 78
    assert run.states() == ["STARTING", "FATAL"]
    fatal = run.event("state_changed", new="FATAL")
    assert fatal is not None and "unrecognized arguments" in fatal["reason"]
    assert len(launched_pids(run)) == 1
    assert any(s.startswith("FATAL:") for s in run.notify.statuses())
    assert run.notify.first("READY") is None
    assert_nothing_left(run)


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
    assert stop(run) == 0
    assert_nothing_left(run)


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
    assert stop(run) == 0
    assert_nothing_left(run)


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
    assert stop(run) == 0
    assert_nothing_left(run)


def test_stubborn_vllm_is_sigkilled_after_the_grace_period(supervise: Launcher) -> None:
    run = supervise("load_seconds=0.2,ignore_sigterm,stubborn_children")
    run.wait_state("READY", 60)  # the first fault test: a cold start on a busy machine
    started = time.monotonic()
    assert stop(run) == 0
    took = time.monotonic() - started
    killed = run.event("vllm_killed")
    assert killed is not None and "VLLM::EngineCore" in killed["processes"]
    assert 2 <= took < 15  # the 2 s grace, then SIGKILL
    assert run.event("vllm_survivors") is None
    assert_nothing_left(run)


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
    assert stop(second) == 0
    assert_nothing_left(second)


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
    write_adapter(tmp_path / "adapters" / "wide", 64, str(tmp_path / "model"))
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
    assert stop(run) == 0
    assert_nothing_left(run)


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
    assert stop(run) == 0
    assert_nothing_left(run)


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
    assert stop(run) == 0
    assert time.monotonic() - started < 15  # well inside the 30 s probe timeout
    assert_nothing_left(run)


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
    assert stop(first) == 0
    assert_nothing_left(first)


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
                assert "notifications dropped" in status_command(run).stdout
                assert stop(run) == 0
                assert run.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
            finally:
                stop_supervisor(run)
        assert_nothing_left(run)
    finally:
        unread.close()


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
    assert stop(run) == 0
    assert_nothing_left(run)


def test_sigterm_during_preflight_ends_the_start_cleanly(
    supervise: Launcher, tmp_path: Path
) -> None:
    run, release = _supervise_held_in_preflight(supervise, tmp_path)
    run.signal(signal.SIGTERM)
    release.touch()
    assert run.wait_exit(20) == 0
    assert run.event("stopped_before_start", signal="SIGTERM") is not None
    assert launched_pids(run) == []


def test_sigterm_during_a_reload_held_in_preflight_stops_vllm_at_once(
    supervise: Launcher, tmp_path: Path
) -> None:
    # The reload's preflight asks vLLM's interpreter for its version; held there (a cold flag
    # cache takes minutes), the loop still probes, feeds the watchdog and acts on SIGTERM.
    wrapper, hold, asked = tmp_path / "python-held", tmp_path / "hold", tmp_path / "asked"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = -c ] && [ -e '{hold}' ]; then\n"
        f"  touch '{asked}'; i=0\n"
        f"  while [ -e '{hold}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
        "fi\n"
        f"exec '{sys.executable}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    run = supervise("load_seconds=0.2", server__python=str(wrapper))
    run.wait_state("READY", 20)
    hold.touch()
    run.signal(signal.SIGHUP)
    wait_for(asked.exists, 20, "the reload's preflight to be held")
    pings = run.notify.count("WATCHDOG")
    wait_for(lambda: run.notify.count("WATCHDOG") >= pings + 3, 10, "watchdog pings meanwhile")
    run.signal(signal.SIGTERM)
    try:
        wait_for(lambda: "STOPPED" in run.states(), 15, "the stop while the reload is held")
        assert run.states() == ["STARTING", "READY", "STOPPING", "STOPPED"]
        # The supervisor exits without waiting for the reload's preflight to finish.
        assert run.wait_exit(15) == 0
        assert hold.exists()  # the reload was still under way
    finally:
        hold.unlink(missing_ok=True)
    assert_nothing_left(run)


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
    assert stop(run) == 0
    assert_nothing_left(run)
