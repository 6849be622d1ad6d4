"""The installed unit under a real systemd: start, reload, stop, a config error, a wedged
supervisor. The supervisor runs the fake vLLM (tests/fakevllm) with the container's Python."""

from __future__ import annotations

import json
import threading
import time

from harness import wait_for
from installed_service import API_KEY, CONFIG, PORT, UNIT, add_drop_in, service_config
from nspawn import Container

MODELS_PROBE = f"""
import json, sys, urllib.request
request = urllib.request.Request(
    "http://127.0.0.1:{PORT}/v1/models", headers={{"Authorization": "Bearer {API_KEY}"}}
)
with urllib.request.urlopen(request, timeout=5) as answer:
    print(json.dumps(sorted(model["id"] for model in json.load(answer)["data"])))
"""
STATE = ("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result")


def served_models(container: Container) -> list[str]:
    return list(json.loads(container.run("python3", "-c", MODELS_PROBE).stdout))


def service_processes(container: Container) -> list[str]:
    """Every process of the service user, as "pid command"."""
    listed = container.run("pgrep", "-a", "-u", "niodoo", check=False).stdout
    return listed.splitlines()


def start(container: Container) -> dict[str, str]:
    container.run("systemctl", "start", UNIT, timeout=90)
    return container.show(UNIT, *STATE)


def test_start_returns_once_ready_and_status_shows_the_phases(service: Container) -> None:
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            state = service.show(UNIT, "ActiveState", "StatusText")
            seen.append((state["ActiveState"], state["StatusText"]))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = service.run("systemctl", "start", UNIT, check=False, timeout=90)
        # `systemctl start` of a Type=notify unit returns at READY=1: vLLM serves by then.
        models = served_models(service)
    finally:
        done.set()
        watcher.join()
    assert started.returncode == 0, started.stderr
    assert models == ["alpha", "tiny"]
    state = service.show(UNIT, *STATE)
    assert state["ActiveState"] == "active", state
    assert state["StatusText"].startswith("ready"), state
    phases = [text for active, text in seen if active == "activating" and text]
    assert len(set(phases)) >= 2, f"STATUS= while starting: {seen}"
    print(f"StatusText while activating: {list(dict.fromkeys(phases))}")


def test_reload_with_a_bad_config_fails_and_keeps_the_old_one_running(service: Container) -> None:
    before = start(service)
    processes = service_processes(service)
    service.write(CONFIG, service_config(lora__max_lora_rank=4))
    reloaded = service.run("systemctl", "reload", UNIT, check=False, timeout=90)
    # ExecReload= asks the supervisor over its control socket and waits: a refused config
    # fails the reload (before, a bare `kill -HUP` reported success).
    assert reloaded.returncode != 0, reloaded.stdout
    after = service.show(UNIT, *STATE)
    assert after["ActiveState"] == "active", after
    assert after["StatusText"].startswith("reload refused"), after
    assert after["MainPID"] == before["MainPID"]
    assert service_processes(service) == processes
    assert served_models(service) == ["alpha", "tiny"]
    journal = service.journal(UNIT)
    assert "reload_refused" in journal
    assert "refused, the running config stays: " in journal  # the verb's own line
    status = service.run("niodoo-supervisor", "status", "-c", CONFIG, check=False)
    assert "serving the previous config; the new one was refused: " in status.stdout


def test_reload_with_a_good_config_succeeds_once_taken(service: Container) -> None:
    before = start(service)
    service.write(CONFIG, service_config(supervisor__health__interval=0.4))
    reloaded = service.run("systemctl", "reload", UNIT, check=False, timeout=90)
    assert reloaded.returncode == 0, reloaded.stderr
    after = service.show(UNIT, *STATE)
    assert (after["ActiveState"], after["MainPID"]) == ("active", before["MainPID"]), after
    journal = service.journal(UNIT)
    assert "taken: applied supervisor.health.interval without a restart" in journal
    assert "reload_applied" in journal


def test_stop_leaves_no_process(service: Container) -> None:
    start(service)
    assert len(service_processes(service)) >= 2  # the supervisor and the fake vLLM
    service.run("systemctl", "stop", UNIT, timeout=90)
    state = service.show(UNIT, *STATE)
    assert state["ActiveState"] == "inactive" and state["Result"] == "success", state
    assert service_processes(service) == []
    # The supervisor stopped vLLM itself: systemd had nothing left to kill.
    assert "SIGKILL" not in service.journal(UNIT)


def test_config_error_exits_78_and_is_not_restarted(service: Container) -> None:
    service.write(CONFIG, service_config(lora__max_lora_rank=4))  # the adapter has rank 8
    started = service.run("systemctl", "start", UNIT, check=False, timeout=90)
    assert started.returncode != 0
    state = service.show(UNIT, *STATE, "ExecMainStatus")
    # A restart would be scheduled at once (SubState auto-restart); 78 leaves it failed.
    assert state["ExecMainStatus"] == "78", state
    assert (state["ActiveState"], state["SubState"]) == ("failed", "failed"), state
    assert state["NRestarts"] == "0"


def test_wedged_supervisor_is_killed_by_the_watchdog_and_restarted(service: Container) -> None:
    add_drop_in(service, "test-watchdog", "[Service]\nWatchdogSec=3\nRestartSec=1\n")
    before = start(service)
    service.run("kill", "-STOP", before["MainPID"])

    def restarted() -> dict[str, str]:
        state = service.show(UNIT, *STATE)
        return state if (state["NRestarts"], state["ActiveState"]) == ("1", "active") else {}

    after = wait_for(
        restarted, 60, "the watchdog to kill the stopped supervisor and systemd to restart it"
    )
    assert after["MainPID"] != before["MainPID"]
    assert "Watchdog timeout" in service.journal(UNIT)
    assert served_models(service) == ["alpha", "tiny"]


def test_unit_starts_on_a_host_without_render_or_video_group(service: Container) -> None:
    for group in ("render", "video"):
        assert service.run("getent", "group", group, check=False).returncode != 0
    assert start(service)["ActiveState"] == "active"
