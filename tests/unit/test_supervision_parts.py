"""The supervisor's parts on their own: backoff, exit texts, HTTP probes, the state file and
ending processes. Real child processes where processes are the subject; always cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from structlog.testing import capture_logs

from niodoo_supervisor.config.supervisor_sections import RestartSection
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.supervise import process_tree, run_record
from niodoo_supervisor.supervise.exits import describe_exit
from niodoo_supervisor.supervise.probes import CheckResult, HttpProber, models_problems
from niodoo_supervisor.supervise.process_tree import (
    ProcessRecord,
    VllmProcess,
    alive,
    session_members,
    terminate_processes,
)
from niodoo_supervisor.supervise.restart_policy import RestartPolicy
from niodoo_supervisor.supervise.run import stop_grace
from niodoo_supervisor.supervise.vllm_events import VllmEventLog
from supervise_sim import FakeRun, Sim, boots

# --- backoff ------------------------------------------------------------------------------------


def _policy(seed: int = 0, **changes: Any) -> RestartPolicy:
    return RestartPolicy(RestartSection(**changes), random.Random(seed))


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = _policy(jitter=0.0, initial_delay=2.0, factor=2.0, max_delay=120.0)
    delays = [policy.next_delay() for _ in range(9)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 120.0, 120.0, 120.0]


def test_backoff_with_factor_one_stays_flat() -> None:
    policy = _policy(jitter=0.0, initial_delay=3.0, factor=1.0)
    assert [policy.next_delay() for _ in range(4)] == [3.0, 3.0, 3.0, 3.0]


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    policy = _policy(seed=1234, jitter=0.1, initial_delay=10.0, factor=1.0, max_delay=10.0)
    delays = [policy.next_delay() for _ in range(200)]
    assert all(9.0 <= delay <= 11.0 for delay in delays)
    assert len(set(delays)) > 100  # it is spread, not a constant
    assert min(delays) < 9.5 and max(delays) > 10.5  # both sides of the base are used


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    runs = [[policy.next_delay() for _ in range(6)] for policy in (_policy(7), _policy(7))]
    assert runs[0] == runs[1]
    other = _policy(8)
    assert runs[0] != [other.next_delay() for _ in range(6)]


def test_jitter_around_the_cap_stays_within_its_fraction() -> None:
    policy = _policy(seed=3, jitter=0.25, initial_delay=100.0, max_delay=120.0)
    delays = [policy.next_delay() for _ in range(50)]
    assert 75.0 <= delays[0] <= 125.0
    assert all(90.0 <= delay <= 150.0 for delay in delays[1:])  # the cap, +/-25%


def test_a_long_ready_stretch_resets_the_backoff() -> None:
    policy = _policy(jitter=0.0, initial_delay=2.0, reset_after=300.0)
    assert [policy.next_delay() for _ in range(3)] == [2.0, 4.0, 8.0]
    policy.record_ready_for(299.0)
    assert policy.next_delay() == 16.0  # not long enough
    policy.record_ready_for(300.0)
    assert policy.next_delay() == 2.0


def test_crash_loop_after_max_starts_within_the_window() -> None:
    policy = _policy(max_starts=5, window=900.0)
    for now in (0.0, 10.0, 20.0, 30.0):
        policy.record_start(now)
        assert not policy.crash_loop(now + 1)
    policy.record_start(40.0)
    assert policy.crash_loop(41.0)
    # Once the oldest start leaves the window, one more start is allowed again.
    assert not policy.crash_loop(900.0 + 0.5)


def test_no_crash_loop_when_starts_are_spread_beyond_the_window() -> None:
    policy = _policy(max_starts=5, window=900.0)
    for now in (0.0, 250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0):
        policy.record_start(now)
        assert not policy.crash_loop(now + 1), now
    assert len(policy.starts) == 4  # starts older than the window are forgotten


def test_a_long_ready_stretch_also_forgets_the_starts() -> None:
    policy = _policy(max_starts=3, window=900.0)
    for now in (0.0, 1.0, 2.0):
        policy.record_start(now)
    assert policy.crash_loop(3.0)
    policy.record_ready_for(300.0)
    assert not policy.crash_loop(3.0)


# --- exits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (78, "exited with code 78"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-6, "killed by SIGABRT"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


# --- health -------------------------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _models(*entries: tuple[str, str | None]) -> dict[str, object]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "parent": parent} for name, parent in entries],
    }


class _Server:
    """A MockTransport handler that records what was asked."""

    def __init__(self, health: int = 200, models: object = None, models_status: int = 200):
        self.health = health
        self.models = models
        self.models_status = models_status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/health":
            return httpx.Response(self.health)
        if request.url.path == "/v1/models":
            return httpx.Response(self.models_status, json=self.models)
        return httpx.Response(404)

    @property
    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]


async def _check(
    handler: Handler, adapters: tuple[str, ...] = ("alpha", "beta"), api_key: str | None = None
) -> tuple[bool, str, tuple[str, ...], CheckResult]:
    prober = HttpProber(
        "http://127.0.0.1:8000",
        served="tiny",
        adapters=adapters,
        api_key=api_key,
        timeout=2.0,
        transport=httpx.MockTransport(handler),
    )
    try:
        result = await prober.check()
    finally:
        await prober.aclose()
    return result.ok, result.reason, result.missing, result


async def test_ready_when_health_is_200_and_every_adapter_is_listed() -> None:
    server = _Server(models=_models(("tiny", None), ("alpha", "tiny"), ("beta", "tiny")))
    ok, reason, missing, _ = await _check(server)
    assert (ok, reason, missing) == (True, "ok", ())
    assert server.paths == ["/health", "/v1/models"]


async def test_health_503_is_not_ok_and_models_are_not_asked() -> None:
    server = _Server(health=503, models=_models(("tiny", None)))
    ok, reason, _, result = await _check(server)
    assert not ok and reason == "/health: HTTP 503"
    assert server.paths == ["/health"]
    assert result.models is None


async def test_models_missing_an_adapter_names_it() -> None:
    server = _Server(models=_models(("tiny", None), ("alpha", "tiny")))
    ok, reason, missing, _ = await _check(server)
    assert not ok
    assert missing == ("beta",)
    assert reason == "/v1/models: missing beta"


async def test_adapter_with_the_wrong_parent_is_named() -> None:
    server = _Server(models=_models(("tiny", None), ("alpha", "tiny"), ("beta", "other")))
    ok, reason, missing, _ = await _check(server)
    assert not ok and missing == ("beta",)
    assert reason == "/v1/models: adapter(s) beta not parented to tiny"


async def test_models_http_error_and_garbage_are_not_ok() -> None:
    ok, reason, _, _ = await _check(_Server(models_status=401, models={"error": "no"}))
    assert not ok and reason == "/v1/models: HTTP 401"
    ok, reason, missing, _ = await _check(_Server(models={"data": "nope"}))
    assert not ok and reason == "/v1/models: answer is not a model list"
    assert missing == ("tiny", "alpha", "beta")


async def test_bearer_token_is_sent_when_an_api_key_is_given() -> None:
    server = _Server(models=_models(("tiny", None)))
    ok, _, _, _ = await _check(server, adapters=(), api_key="k-42")
    assert ok
    assert [request.headers.get("Authorization") for request in server.requests] == [
        "Bearer k-42",
        "Bearer k-42",
    ]
    server = _Server(models=_models(("tiny", None)))
    await _check(server, adapters=(), api_key=None)
    assert all("Authorization" not in request.headers for request in server.requests)


async def test_connection_refused_is_a_reason_not_an_exception() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    ok, reason, _, _ = await _check(refuse)
    assert not ok and reason == "/health: connection refused"


async def test_a_key_quoted_by_an_error_is_redacted_from_the_reason() -> None:
    key = "sk-reason-test-quoted"

    def proxy(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            f"proxy said: Authorization: Bearer {key} rejected", request=request
        )

    ok, reason, _, _ = await _check(proxy, api_key=key)
    assert not ok and key not in reason
    assert (
        reason == "/health: cannot connect: proxy said: Authorization: Bearer <redacted> rejected"
    )


async def test_timeout_is_a_reason_not_an_exception() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    ok, reason, _, _ = await _check(slow)
    assert not ok and reason == "/health: timed out"


async def test_real_closed_port_is_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connecting is refused
        prober = HttpProber(
            f"http://127.0.0.1:{port}", served="m", adapters=(), api_key=None, timeout=2.0
        )
        try:
            result = await prober.check()
        finally:
            await prober.aclose()
    assert not result.ok and result.reason == "/health: connection refused"
    assert result.health.status is None


def test_models_problems_lists_missing_served_model_too() -> None:
    missing, reason = models_problems(_models(("alpha", "tiny")), "tiny", ["alpha"])
    assert missing == ["tiny"] and reason == "missing tiny"


# --- child processes ----------------------------------------------------------------------------

_SLEEPER = "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"
_IGNORES_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)
_WITH_GRANDCHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(30)\n"
)


@pytest.fixture
def spawn() -> Iterator[Callable[[str], tuple[subprocess.Popen[str], str]]]:
    """Start `python -c CODE` as a session leader; returns it and its first output line.
    Every session started is SIGKILLed at the end, whatever the test did."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str) -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # EOF ('') if it died: the test then fails
        assert line, "the child died before it was ready"
        return process, line

    try:
        yield start
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def _record(pid: int) -> ProcessRecord:
    process = psutil.Process(pid)
    return ProcessRecord(pid, process.create_time(), process.name(), process.exe())


def _run_record(leader: ProcessRecord, *members: ProcessRecord) -> run_record.RunRecord:
    return run_record.RunRecord(
        supervisor_pid=os.getpid(), sid=leader.pid, leader=leader, members=members
    )


def test_state_file_round_trip(tmp_path: Path) -> None:
    leader = ProcessRecord(1234, 1700000000.25, "python3")
    worker = ProcessRecord(1240, 1700000003.5, "VLLM::EngineCore")
    record = run_record.RunRecord(os.getpid(), 1234, leader, (worker,), supervisor_create_time=1.5)
    run_record.write(tmp_path / "state", record)
    assert run_record.read(tmp_path / "state") == record
    saved = json.loads((tmp_path / "state" / run_record.FILE_NAME).read_text())
    assert saved["boot_time"] == psutil.boot_time() and saved["supervisor_create_time"] == 1.5
    assert [path.name for path in (tmp_path / "state").iterdir()] == [run_record.FILE_NAME]
    run_record.clear(tmp_path / "state")
    assert run_record.read(tmp_path / "state") is None
    run_record.clear(tmp_path / "state")  # clearing twice is fine


@pytest.mark.parametrize("content", ["", "{", "[]", '{"sid": 1}', '{"supervisor_pid": "x"}'])
def test_unreadable_state_file_reads_as_none(tmp_path: Path, content: str) -> None:
    (tmp_path / run_record.FILE_NAME).write_text(content)
    assert run_record.read(tmp_path) is None


def test_leftover_processes_finds_the_recorded_live_process(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, _ = spawn(_SLEEPER)
    leader = _record(process.pid)
    assert alive(leader)
    assert [found.pid for found in run_record.leftover_processes(_run_record(leader))] == [
        process.pid
    ]


def test_leftover_processes_ignores_a_reused_pid(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, _ = spawn(_SLEEPER)
    real = _record(process.pid)
    # Same pid, another start time: the recorded process is gone, this one only reuses its pid.
    stale = ProcessRecord(real.pid, real.create_time - 100.0, real.name)
    assert not alive(stale)
    assert run_record.leftover_processes(_run_record(stale)) == []


def test_leftover_processes_finds_later_members_of_the_session(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, line = spawn(_WITH_GRANDCHILD)
    grandchild = int(line)
    found = {
        record.pid for record in run_record.leftover_processes(_run_record(_record(process.pid)))
    }
    assert found == {process.pid, grandchild}
    assert {record.pid for record in session_members(process.pid)} == {process.pid, grandchild}


def test_leftover_processes_of_an_ended_process_is_empty(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, _ = spawn(_SLEEPER)
    record = _record(process.pid)
    process.kill()
    process.wait(timeout=10)
    assert run_record.leftover_processes(_run_record(record)) == []


async def test_terminate_processes_kills_what_ignores_sigterm_after_the_grace(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, _ = spawn(_IGNORES_TERM)
    record = _record(process.pid)
    started = time.monotonic()
    killed, survivors = await terminate_processes([record], grace=0.5)
    elapsed = time.monotonic() - started
    assert killed == [record] and survivors == []
    assert elapsed >= 0.5  # SIGKILL only after the grace period
    assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL


async def test_terminate_processes_lets_a_polite_process_end_on_sigterm(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, _ = spawn(_SLEEPER)
    record = _record(process.pid)
    started = time.monotonic()
    killed, survivors = await terminate_processes([record], grace=10.0)
    assert (killed, survivors) == ([], [])
    assert time.monotonic() - started < 5.0  # did not sit out the grace period
    assert await asyncio.to_thread(process.wait, 10) == -signal.SIGTERM


async def test_terminate_processes_never_signals_a_reused_pid(
    spawn: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    process, _ = spawn(_SLEEPER)
    real = _record(process.pid)
    stale = ProcessRecord(real.pid, real.create_time - 100.0, real.name)
    assert await terminate_processes([stale], grace=0.2, kill_timeout=0.2) == ([], [])
    assert process.poll() is None and alive(real)


def test_a_record_from_an_earlier_boot_names_nothing(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        me = _record(process.pid)
        stale = run_record.RunRecord(os.getpid(), me.pid, me, boot_time=psutil.boot_time() - 3600)
        assert run_record.leftover_processes(stale) == []
        assert run_record.leftover_processes(_run_record(me)) == [me]
    finally:
        process.kill()
        process.wait()


def test_an_orphaned_session_of_a_stranger_is_never_swept() -> None:
    # A stranger's session whose leader exited: only the session id matches the old record.
    stranger = subprocess.Popen(
        ["setsid", "sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, text=True
    )
    assert stranger.stdout is not None
    sleeper = int(stranger.stdout.readline())
    stranger.wait()
    try:
        sid = os.getsid(sleeper)
        dead_leader = ProcessRecord(sid, psutil.Process(sleeper).create_time() - 100, "python")
        record = run_record.RunRecord(os.getpid(), sid, dead_leader)
        assert run_record.leftover_processes(record) == []
    finally:
        os.kill(sleeper, signal.SIGKILL)


def test_status_file_is_readable_by_the_group_only_and_the_state_file_by_no_one_else(
    tmp_path: Path,
) -> None:
    from niodoo_supervisor.supervise.status_file import STATUS_FILE, StatusBoard

    # status.json quotes the last log lines (requests, client text): not for every local user.
    StatusBoard().write(tmp_path)
    assert (tmp_path / STATUS_FILE).stat().st_mode & 0o777 == 0o640
    me = _record(os.getpid())
    run_record.write(tmp_path, _run_record(me))
    assert (tmp_path / run_record.FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_event_log_limiter_admits_a_budget_per_window_then_reports_what_it_held_back() -> None:
    from niodoo_supervisor.supervise.event_limit import EventLogLimiter

    limiter = EventLogLimiter(per_window=2, window=10.0)
    assert [limiter.admit("ignored_request_fields", 0.0 + i) for i in range(5)] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
        (False, 0),
    ]
    assert limiter.admit("engine_dead", 5.0) == (True, 0)  # each rule has its own budget
    assert limiter.admit("ignored_request_fields", 10.0) == (True, 3)  # new window: 3 were held
    assert limiter.admit("ignored_request_fields", 11.0) == (True, 0)


# --- stopping vLLM's process tree ---------------------------------------------------------------

# The "EngineCore": records who sent it SIGTERM (si_pid) and when; a stubborn one then waits
# for SIGKILL (SIGTERM stays blocked).
_ENGINE = (
    "import signal, sys, time, pathlib\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "out = pathlib.Path(sys.argv[1])\n"
    "out.with_suffix('.up').write_text('up')\n"
    "info = signal.sigwaitinfo({signal.SIGTERM})\n"
    "out.write_text(f'{info.si_pid} {time.monotonic()}')\n"
    "if sys.argv[2] == 'stubborn':\n"
    "    time.sleep(60)\n"
)
# The "API server": starts the engine, then on SIGTERM (recorded like the engine's) drains,
# notes whether its engine was still alive at the end of the drain, and ends it itself;
# `deaf` ignores SIGTERM instead, `leaves` exits at once leaving its engine behind.
_API_SERVER = (
    "import signal, subprocess, sys, time, pathlib\n"
    "engine_out, mode, engine_mode = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "engine = subprocess.Popen([sys.executable, '-c', sys.argv[4], str(engine_out), engine_mode])\n"
    "while not engine_out.with_suffix('.up').exists():\n"
    "    time.sleep(0.01)\n"
    "out = engine_out.with_name('api_server')\n"
    "out.with_suffix('.up').write_text(str(engine.pid))\n"
    "if mode == 'leaves':\n"
    "    sys.exit(0)\n"
    "info = signal.sigwaitinfo({signal.SIGTERM})\n"
    "out.write_text(f'{info.si_pid} {time.monotonic()}')\n"
    "if mode == 'deaf':\n"
    "    time.sleep(60)\n"
    "time.sleep(0.3)\n"
    "out.with_suffix('.drained').write_text(str(engine.poll() is None))\n"
    "engine.terminate()\n"
    "engine.wait()\n"
)


@dataclass
class _Tree:
    process: VllmProcess
    engine_pid: int
    dir: Path

    def term(self, who: str) -> tuple[int, float] | None:
        """(who sent SIGTERM, when) as `who` ("api_server" or "engine") recorded it."""
        path = self.dir / who
        if not path.exists():
            return None
        sender, at = path.read_text().split()
        return int(sender), float(at)


@pytest.fixture
async def vllm_tree(tmp_path: Path) -> AsyncIterator[Callable[[str, str], Awaitable[_Tree]]]:
    """Start the fake API server (`mode`: drains, deaf, leaves) with its fake engine
    (`engine_mode`: polite, stubborn) as a session leader; SIGKILLed at the end."""
    started: list[VllmProcess] = []

    async def start(mode: str, engine_mode: str) -> _Tree:
        argv = (sys.executable, "-c", _API_SERVER, str(tmp_path / "engine"), mode, engine_mode)
        process = await process_tree.spawn((*argv, _ENGINE), dict(os.environ))
        started.append(process)
        up = tmp_path / "api_server.up"
        deadline = time.monotonic() + 30
        while not up.exists() or not up.read_text():
            assert time.monotonic() < deadline, "the fake API server did not start its engine"
            await asyncio.sleep(0.02)
        return _Tree(process, int(up.read_text()), tmp_path)

    try:
        yield start
    finally:
        for process in started:
            process.signal_group(signal.SIGKILL)
            for member in process.members():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, signal.SIGKILL)
            await process.wait()
            process.close()


async def test_a_stop_signals_the_api_server_alone_and_lets_it_end_its_engine(
    vllm_tree: Callable[[str, str], Awaitable[_Tree]],
) -> None:
    tree = await vllm_tree("drains", "polite")
    killed, survivors = await tree.process.terminate(grace=30.0)
    assert (killed, survivors) == ([], [])
    assert tree.process.returncode == 0
    api_server, engine = tree.term("api_server"), tree.term("engine")
    assert api_server is not None and api_server[0] == os.getpid()
    # The engine lived through the whole drain and was stopped by its API server, not by us.
    assert (tree.dir / "api_server.drained").read_text() == "True"
    assert engine is not None and engine[0] == tree.process.pid


async def test_the_group_gets_sigterm_only_after_the_grace_then_sigkill(
    vllm_tree: Callable[[str, str], Awaitable[_Tree]],
) -> None:
    tree = await vllm_tree("deaf", "stubborn")
    started = time.monotonic()
    killed, survivors = await tree.process.terminate(grace=0.5, group_wait=0.3)
    api_server = tree.term("api_server")
    engine = tree.term("engine")
    assert api_server is not None and api_server[0] == os.getpid()
    assert engine is not None and engine[0] == os.getpid()  # the group's SIGTERM, ours
    assert engine[1] - started >= 0.5 and engine[1] > api_server[1]  # only after the grace
    assert {record.pid for record in killed} == {tree.process.pid, tree.engine_pid}
    assert survivors == [] and tree.process.members() == []
    assert tree.process.returncode == -signal.SIGKILL


async def test_members_left_by_an_exited_api_server_are_ended_without_waiting_the_grace(
    vllm_tree: Callable[[str, str], Awaitable[_Tree]],
) -> None:
    tree = await vllm_tree("leaves", "polite")
    assert await tree.process.wait() == 0
    assert [record.pid for record in tree.process.members()] == [tree.engine_pid]
    started = time.monotonic()
    killed, survivors = await tree.process.terminate(grace=60.0)
    assert time.monotonic() - started < 30.0  # did not sit out the grace
    assert (killed, survivors) == ([], [])
    engine = tree.term("engine")
    assert engine is not None and engine[0] == os.getpid()


async def test_a_stubborn_member_of_an_exited_api_server_is_sigkilled(
    vllm_tree: Callable[[str, str], Awaitable[_Tree]],
) -> None:
    tree = await vllm_tree("leaves", "stubborn")
    await tree.process.wait()
    killed, survivors = await tree.process.terminate(grace=60.0, group_wait=0.3)
    assert [record.pid for record in killed] == [tree.engine_pid] and survivors == []
    assert not psutil.pid_exists(tree.engine_pid) or not alive(killed[0])


# --- vLLM's lines during a stop the supervisor asked for ----------------------------------------


def _engine_dead() -> Event:
    text = "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue."
    return Event(
        "engine_dead",
        Severity.CRITICAL,
        Action.CHECK_NOW,
        "restarts",
        text,
        "APIServer",
        7,
        None,
        (text,),
    )


def _vllm_events(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [record for record in logs if record["event"] == "vllm_event"]


def test_error_lines_are_info_with_stop_requested_only_while_stopping_on_purpose() -> None:
    counters = EventCounters()
    events = VllmEventLog(counters)
    warning = replace(_engine_dead(), rule="worker_warning", severity=Severity.WARNING)
    with capture_logs() as logs:
        with events.stopping():
            events.record(_engine_dead(), 0.0)
            events.record(warning, 0.0)
        events.record(_engine_dead(), 1.0)  # after the stop: a crash again
    during, warned, after = _vllm_events(logs)
    assert during["severity"] == "info" and during["stop_requested"] is True
    assert during["rule_severity"] == "critical" and during["hint"] is None
    assert warned["severity"] == "warning" and "stop_requested" not in warned
    assert after["severity"] == "critical" and "stop_requested" not in after
    assert counters.rules == {"engine_dead": 2, "worker_warning": 1}  # all still counted


def _says_engine_dead_when_stopped(run: FakeRun) -> None:
    """vLLM logs EngineDeadError even on a clean SIGTERM (01-start-requests-sigterm.log)."""
    stop = run.stop

    async def stop_saying_it(grace: float) -> None:
        run.say("EngineDeadError", _engine_dead())
        await stop(grace)

    run.stop = stop_saying_it  # type: ignore[method-assign]


def test_a_stop_or_restart_the_supervisor_asked_for_logs_no_critical_event(
    tmp_path: Path,
) -> None:
    def crashes_then_fails_checks(run: FakeRun) -> None:
        _says_engine_dead_when_stopped(run)
        run.sim.after(8, lambda: run.say("EngineDeadError", _engine_dead()))  # not asked for
        run.sim.after(12, lambda: setattr(run.sim.server, "health", 503))

    def boots_then_says_engine_dead(run: FakeRun) -> None:
        _says_engine_dead_when_stopped(run)

    sim = Sim(
        tmp_path,
        scripts=[
            boots(5.0, then=crashes_then_fails_checks),
            boots(5.0, then=boots_then_says_engine_dead),
        ],
    )
    sim.at(150, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states()[-3:] == ["READY", "STOPPING", "STOPPED"]
    assert "BACKOFF" in sim.states()  # the restart it decided after the failed checks
    engine_dead = [r for r in _vllm_events(sim.logs) if r["rule"] == "engine_dead"]
    severities = [(r["severity"], r.get("stop_requested")) for r in engine_dead]
    assert severities == [("critical", None), ("info", True), ("info", True)]
    assert sim.supervisor.reporter.counters.rules["engine_dead"] == 3


@pytest.mark.parametrize(
    ("grace", "shutdown_timeout", "waits"),
    [(15, None, 15), (15, 0, 15), (15, 40, 50), (60, 40, 60)],
)
def test_the_stop_waits_long_enough_for_vllms_own_drain(
    grace: float, shutdown_timeout: int | None, waits: float
) -> None:
    assert stop_grace(grace, shutdown_timeout) == waits
