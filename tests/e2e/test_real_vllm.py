"""The supervisor against a real vLLM (CPU build) serving the tiny demo model and two adapters.

One supervised server is shared by the tests of this module, in order: those that only talk
to it first, then those that kill parts of it (each waits until it is ready again), then the
stop. Scenario durations are printed as figures, and so is each start's ready-lag: how long
after vLLM answers as ready (seen by a poller of our own) the supervisor sends READY=1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from harness import (
    NotifySocket,
    SupervisorRun,
    start_supervisor,
    stop_supervisor,
    wait_for,
)
from niodoo_supervisor.demo.model import DemoModel
from niodoo_supervisor.logs.counters import clip_field_name
from realvllm import (
    ReadinessPoller,
    port_of,
    record_figure,
    record_ready_lags,
    write_demo_config,
)
from rulesamples import SPOOFS

START_TIMEOUT = 300  # a cold CPU start of vLLM is ~30-40 s here; a loaded CI machine is slower
# Rules for a line saying vLLM's engine died (built-in table, "engine death").
ENGINE_DEATH_RULES = {"engine_core_died", "engine_dead", "engine_fatal_error"}


@dataclass
class Served:
    run: SupervisorRun
    base_url: str
    poller: ReadinessPoller
    launched_at: float


@pytest.fixture(scope="module")
def served(e2e_tmp: Path, vllm_python: str, demo_model: DemoModel) -> Iterator[Served]:
    tmp = e2e_tmp / "shared"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    port = port_of(config)
    notify = NotifySocket(tmp / "notify.sock")
    poller = ReadinessPoller(f"http://127.0.0.1:{port}", ("tiny", "alpha", "beta"))
    poller.start()
    launched_at = time.monotonic()
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        yield Served(run, f"http://127.0.0.1:{port}", poller, launched_at)
    finally:
        poller.stop()
        stop_supervisor(run)
        notify.close()
        readies = [m.at for m in notify.snapshot() if m.fields.get("READY") == "1"]
        record_ready_lags(poller.polls(), readies)


def _chat(base_url: str, model: str, **extra: object) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        **extra,
    }
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60, trust_env=False)


def _vllm_pid(run: SupervisorRun) -> int:
    """The running vLLM's pid, from the status file's `vllm_pid` field."""

    def current() -> int | None:
        pid = run.status().get("vllm_pid")
        return pid if isinstance(pid, int) else None

    pid = wait_for(current, 30, "vllm_pid in the status file")
    assert pid is not None
    return pid


def _vllm_processes(run: SupervisorRun) -> list[psutil.Process]:
    """The running vLLM's processes: its session, which the supervisor started it to lead."""
    leader = _vllm_pid(run)
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == leader and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (OSError, psutil.Error):
            continue
    return found


def _named(run: SupervisorRun, name: str) -> psutil.Process:
    def find() -> psutil.Process | None:
        for process in _vllm_processes(run):
            try:
                if name in process.name() or name in " ".join(process.cmdline()):
                    return process
            except psutil.Error:
                continue
        return None

    found = wait_for(find, 30, f"a {name} process")
    assert found is not None
    return found


def test_ready_lists_model_and_adapters_and_ready_1_comes_only_after(served: Served) -> None:
    run = served.run
    run.wait_state("READY", START_TIMEOUT)
    ready = wait_for(lambda: run.notify.first("READY", "1"), 10, "READY=1 on the notify socket")
    assert ready is not None
    record_figure(f"time to ready (launch -> READY=1): {ready.at - served.launched_at:.1f}s")
    models = httpx.get(f"{served.base_url}/v1/models", timeout=10, trust_env=False).json()["data"]
    parents = {item["id"]: item["parent"] for item in models}
    assert parents == {"tiny": None, "alpha": "tiny", "beta": "tiny"}
    # No outside poll that started after READY=1 saw an incomplete model list...
    polls = wait_for(
        lambda: [p for p in served.poller.polls() if p.started > ready.at + 0.05],
        5,
        "a poll after READY=1",
    )
    assert all(poll.ok for poll in polls)
    # ...and polls before it did fail: READY=1 was not sent before vLLM was up.
    assert any(not poll.ok for poll in served.poller.polls() if poll.started < ready.at)
    assert any("starting vLLM:" in status for status in run.notify.statuses())
    _progress_then_ready(run)


def _progress_then_ready(run: SupervisorRun) -> None:
    """The start's records: a `progress` record per phase with vLLM's own numbers (not its
    line), then a `ready` record naming what is served."""
    ready = wait_for(lambda: run.event("ready"), 10, "the ready record")
    assert ready is not None
    records = run.events()
    upto = records[: records.index(ready) + 1]
    progress = {r["phase"]: r["summary"] for r in upto if r["event"] == "progress"}
    assert {"starting", "engine_init", "loading_weights", "weights_loaded", "kv_cache"} <= set(
        progress
    ), progress
    assert re.fullmatch(r"KV cache [\d,]+ tokens", progress["kv_cache"])
    assert re.fullmatch(r"weights loaded in [\d.]+ s", progress["weights_loaded"])
    assert not [r for r in upto if r["event"] == "vllm_event"]  # no phase repeats vLLM's line
    assert ready["model"] == "tiny" and re.fullmatch(
        rf"serving tiny with adapters alpha, beta on {ready['address']} after [\d.]+ s",
        ready["summary"],
    )
    record_figure(
        f"supervisor records launch -> ready: {len(upto)} "
        f"({sum(r['event'] == 'progress' for r in upto)} progress)"
    )


def test_chat_completion_through_each_adapter(served: Served) -> None:
    served.run.wait_state("READY", START_TIMEOUT)
    for model in ("alpha", "beta", "tiny"):
        response = _chat(served.base_url, model)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        assert response.json()["choices"][0]["message"]["content"] is not None


def test_lora_name_field_is_reported_as_an_ignored_field_event(served: Served) -> None:
    run = served.run
    run.wait_state("READY", START_TIMEOUT)
    response = _chat(served.base_url, "tiny", lora_name="alpha")
    assert response.status_code == 200  # vLLM serves the base model and says nothing to the client
    answered = time.monotonic()
    event = wait_for(
        lambda: run.event("vllm_event", rule="ignored_request_fields"),
        10,
        "the ignored-field event",
    )
    seen = time.monotonic() - answered
    assert event is not None and "lora_name" in event["details"]
    assert "model" in event["hint"]
    record_figure(f"lora_name request -> ignored-field event: {seen:.2f}s")
    fields = wait_for(
        lambda: run.status().get("events", {}).get("ignored_fields"), 15, "status counters"
    )
    assert fields is not None and fields.get("lora_name", 0) >= 1


def test_field_names_spoofing_fatal_and_death_lines_are_only_counted(served: Served) -> None:
    """Each fatal and check_now line of the rule table, sent as a request field name: the real
    vLLM logs it (as an ignored field) and nothing but the ignored-field count follows."""
    run = served.run
    run.wait_state("READY", START_TIMEOUT)
    before = run.status()
    states, seen = run.states(), len(run.events())
    for spoof in SPOOFS:
        response = _chat(served.base_url, "tiny", max_tokens=1, **{spoof: 1})
        assert response.status_code == 200, response.text

    def counted() -> bool:
        fields = run.status().get("events", {}).get("ignored_fields", {})
        return all(clip_field_name(spoof) in fields for spoof in SPOOFS)

    wait_for(counted, 30, "every spoofed name counted as an ignored field")
    after = run.status()
    changed = {
        rule: seen_after["count"]
        for rule, seen_after in after["events"]["rules"].items()
        if seen_after["count"] != before["events"]["rules"].get(rule, {}).get("count", 0)
    }
    assert set(changed) == {"ignored_request_fields"}, changed
    logged = {r["rule"] for r in run.events()[seen:] if r.get("event") == "vllm_event"}
    assert logged <= {"ignored_request_fields"}, logged
    assert after["vllm_pid"] == before["vllm_pid"] and after["restarts"] == before["restarts"]
    assert run.states() == states and after["state"] == "READY"
    record_figure(f"{len(SPOOFS)} requests with spoofing field names: only counted, no restart")


def test_killed_engine_core_is_noticed_and_vllm_restarted(served: Served) -> None:
    run = served.run
    run.wait_state("READY", START_TIMEOUT)
    readies = run.states().count("READY")
    engine = _named(run, "VLLM::EngineCore")
    killed_at = time.monotonic()
    engine.send_signal(signal.SIGKILL)
    wait_for(
        lambda: run.states().count("BACKOFF") >= 1, 60, "the supervisor to notice the dead engine"
    )
    detected = time.monotonic() - killed_at
    wait_for(lambda: run.states().count("READY") > readies, START_TIMEOUT, "READY again")
    recovered = time.monotonic() - killed_at
    backoff = [
        r for r in run.events() if r.get("event") == "state_changed" and r.get("new") == "BACKOFF"
    ][-1]
    crash = [r for r in run.events() if r.get("event") == "crash_report"][-1]
    # Noticed by vLLM's engine-death line confirmed by /health 503, not by the exit 0 that
    # follows seconds later (every such exit's reason also says "engine").
    assert crash.get("rule") in ENGINE_DEATH_RULES, crash
    assert backoff["reason"].startswith("engine died ("), backoff
    record_figure(
        f"kill -9 EngineCore: detected in {detected:.1f}s, ready again in {recovered:.1f}s ({backoff['reason'][:90]})"
    )
    assert _chat(served.base_url, "alpha").status_code == 200


def test_killed_api_server_leaves_no_orphan_after_the_restart(served: Served) -> None:
    run = served.run
    wait_for(lambda: run.status().get("state") == "READY", START_TIMEOUT, "READY")
    readies = run.states().count("READY")
    leader = _vllm_pid(run)
    old_session = [p.pid for p in _vllm_processes(run)]
    assert len(old_session) >= 2  # the API server and at least its EngineCore
    killed_at = time.monotonic()
    psutil.Process(leader).send_signal(signal.SIGKILL)
    wait_for(lambda: run.states().count("READY") > readies, START_TIMEOUT, "READY again")
    record_figure(f"kill -9 API server: ready again in {time.monotonic() - killed_at:.1f}s")
    survivors = [
        pid
        for pid in old_session
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert survivors == [], f"orphans of the killed API server survive: {survivors}"
    assert not any(
        "VLLM::" in " ".join(_cmdline(pid)) and _sid(pid) == leader for pid in psutil.pids()
    )


def test_sigterm_stops_everything_and_exits_zero(served: Served) -> None:
    run = served.run
    wait_for(lambda: run.status().get("state") == "READY", START_TIMEOUT, "READY")
    pids = [p.pid for p in _vllm_processes(run)]
    assert pids
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(120) == 0
    record_figure(f"SIGTERM -> supervisor exit 0 with vLLM gone: {time.monotonic() - started:.1f}s")
    assert run.notify.first("STOPPING", "1") is not None
    alive = [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


# --- refusals: separate supervisors, no shared server needed --------------------------------


def _cli(*args: str, timeout: float = 300) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "niodoo_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def test_rank_64_adapter_is_refused_by_check_and_run_before_vllm_starts(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "rank"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    text = config.read_text().replace(
        str(demo_model.adapters["beta"]), str(demo_model.adapters["wide"])
    )
    config.write_text(text)
    code, output, took = _cli("check", "-c", str(config))
    assert code == 78, output
    assert (
        "has rank 64, above lora.max_lora_rank 16" in output
        and "set lora.max_lora_rank to 64" in output
    )
    record_figure(
        f"rank 64 > 16: `check` refused it in {took:.2f}s (vLLM itself needs ~30 s to fail)"
    )
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        assert run.wait_exit(300) == 78, run.stderr()
        took = time.monotonic() - run.started
        problems = [r["problem"] for r in run.events() if r.get("event") == "config_problem"]
        assert any("has rank 64" in problem for problem in problems), problems
        assert run.event("preflight_refused") is not None, run.stderr()
        assert run.states() == []  # never STARTING: vLLM was not launched
    finally:
        stop_supervisor(run)
        notify.close()
    record_figure(f"rank 64 > 16: `run` refused it before launching in {took:.2f}s")


def test_unknown_flag_is_refused_by_preflight_and_fatal_at_first_start_when_forced(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "flag"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    config.write_text(
        config.read_text().replace("server:\n", "server:\n  extra_args: [--no-such-flag]\n", 1)
    )
    code, output, took = _cli("check", "-c", str(config))
    assert code == 78, output
    assert "--no-such-flag is not a flag of the installed vLLM 0.32.0" in output
    record_figure(
        f"unknown flag: `check` refused it in {took:.1f}s (asks vLLM's --help once, then cached)"
    )
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp, extra_args=("--skip-flag-check",))
    try:
        assert run.wait_exit(120) == 78
        assert run.states() == ["STARTING", "FATAL"]  # one start, no restart attempts
        fatal = run.event("state_changed", new="FATAL")
        assert fatal is not None and "unrecognized arguments: --no-such-flag" in fatal["reason"]
        record_figure(
            f"unknown flag forced past preflight: FATAL after {time.monotonic() - run.started:.1f}s, 1 start"
        )
    finally:
        stop_supervisor(run)
        notify.close()
