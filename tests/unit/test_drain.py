"""Drained stops in virtual time (supervise_sim), the gauges' parsing, the readiness
endpoint and the `drain` section of the config."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from niodoo_supervisor.config.loader import parse_config
from niodoo_supervisor.config.problems import Problem
from niodoo_supervisor.control.readiness_http import ReadinessServer
from niodoo_supervisor.supervise.drain import RequestLoad, parse_load, vllm_load_reader
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.reload_diff import KeyClass, class_of
from supervise_sim import START, Sim, after_start, boots, sim_config, sim_plan

# --- a drained planned restart in virtual time ----------------------------------------------


def _drained_restart(tmp_path: Path, **drain: Any) -> Sim:
    """vLLM ready at 5 s; a reload at 20 s changes its port (a restart)."""
    sim = Sim(
        tmp_path,
        scripts=[boots(5.0), boots(5.0)],
        config=sim_config(tmp_path, drain={"timeout": 20, **drain}),
    )
    sim.reload_result = ReloadResult(
        sim_config(tmp_path, port=8001, drain={"timeout": 20, **drain}),
        sim_plan("python3", "--port", "8001"),
    )
    sim.at(20, sim.signal(signal.SIGHUP))
    return sim


def _drain_seen(sim: Sim, at: float, seen: list[dict[str, Any] | None]) -> None:
    sim.at(at, lambda: seen.append(sim.supervisor.reporter.status.drain))


def _statuses(sim: Sim) -> list[str]:
    return [f for n in sim.notifier.sent for f in n.fields if f.startswith("STATUS=draining")]


def test_a_planned_restart_announces_then_sigterms_vllm_after_announce(tmp_path: Path) -> None:
    sim = _drained_restart(tmp_path, announce=5)
    seen: list[dict[str, Any] | None] = []
    _drain_seen(sim, 22, seen)  # in the announce
    _drain_seen(sim, 40, seen)  # the new vLLM is up
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(20 + 5)
    announce = seen[0]
    assert announce is not None and announce["phase"] == "announce"
    assert announce["timeout"] == 20  # what the running vLLM was launched with
    assert seen[1] is None  # cleared after the stop
    assert sim.supervisor.reporter.status.drain is None
    assert "STATUS=draining: not ready, SIGTERM to vLLM in 5s" in _statuses(sim)


def test_a_stop_during_the_announce_cuts_it_short_and_starts_nothing(tmp_path: Path) -> None:
    sim = _drained_restart(tmp_path, announce=30)
    sim.at(22, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(22)
    assert len(sim.runs) == 1
    assert sim.states()[-2:] == ["STOPPING", "STOPPED"]


def test_a_second_stop_cuts_the_announce_of_a_stop_short(tmp_path: Path) -> None:
    sim = Sim(
        tmp_path,
        scripts=[boots(5.0)],
        config=sim_config(tmp_path, drain={"announce": 30}),
    )
    sim.at(20, sim.signal(signal.SIGTERM))
    sim.at(25, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(25)


def test_a_stop_of_a_vllm_that_never_served_is_not_announced(tmp_path: Path) -> None:
    # Still STARTING at 2 s: no load balancer sends to it, so the SIGTERM goes at once.
    sim = Sim(tmp_path, scripts=[boots(5.0)], config=sim_config(tmp_path, drain={"announce": 8}))
    sim.at(2, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(2)
    assert "STATUS=draining: not ready, SIGTERM to vLLM in 0s" in _statuses(sim)


def test_a_stop_announces_in_full_and_extends_systemds_timeout_by_it(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)], config=sim_config(tmp_path, drain={"announce": 8}))
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(28)
    extend = [f for n in sim.notifier.sent for f in n.fields if f.startswith("EXTEND_TIMEOUT")]
    # announce + the stop's own bound (grace 15 s + group SIGTERM/SIGKILL + last lines) + 3 s
    assert extend and int(extend[0].split("=")[1]) / 1e6 > 8 + 15 + 3


def test_a_headless_hosts_stop_is_not_drained(tmp_path: Path) -> None:
    # Rank 1 of `mp`: no API server on this host, so no traffic to take away and no /metrics.
    topology = {"backend": "mp", "nodes": 2, "rank": 1, "head_address": "10.13.0.1"}
    config = sim_config(tmp_path, drain={"announce": 8, "timeout": 20}, topology=topology)
    sim = Sim(tmp_path, scripts=[boots(5.0)], config=config)
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert "READY" in sim.states()  # it served its part before the stop
    assert sim.runs[0].stopped_at == after_start(20)  # SIGTERM at once, no announce
    assert sim.readers == []
    assert sim.event("drain_started") is None
    assert _statuses(sim) == []


def test_the_status_reports_vllms_requests_as_it_drains(tmp_path: Path) -> None:
    sim = _drained_restart(tmp_path)
    sim.stop_takes = 3.0  # vLLM drains for 3 s: the gauges are read every 0.5 s meanwhile
    sim.loads = [RequestLoad(3, 1), RequestLoad(3, 1), RequestLoad(2, 0), RequestLoad(0, 0)]
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert _statuses(sim)[:4] == [
        "STATUS=draining: not ready, SIGTERM to vLLM in 0s",
        "STATUS=draining: 3 running, 1 waiting",
        "STATUS=draining: 2 running, 0 waiting",
        "STATUS=draining: 0 running, 0 waiting",
    ]
    started, finished = sim.event("drain_started"), sim.event("drain_finished")
    assert started is not None and (started["running"], started["waiting"]) == (3, 1)
    assert finished is not None
    assert (finished["running_at_start"], finished["running_at_end"]) == (3, 0)
    assert finished["seconds"] == pytest.approx(3.0, abs=0.1)


def test_unreadable_gauges_do_not_stop_the_drain(tmp_path: Path) -> None:
    sim = _drained_restart(tmp_path)
    sim.stop_takes = 2.0
    sim.loads = [None, RequestLoad(1, 0), None, None]  # the scrape fails now and then
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.states().count("READY") == 2  # restarted all the same
    assert "STATUS=draining: vLLM's request counts unknown" in _statuses(sim)
    assert "STATUS=draining: 1 running, 0 waiting" in _statuses(sim)
    finished = sim.event("drain_finished")
    assert finished is not None and finished["running_at_start"] is None


def test_the_sigterm_is_not_delayed_by_a_slow_gauge_read(tmp_path: Path) -> None:
    sim = _drained_restart(tmp_path, announce=5)
    sim.read_takes = 1.0  # each read of /metrics takes its whole timeout
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert sim.runs[0].stopped_at == after_start(25)  # the restart at 20 s + announce
    reads = [read for reader in sim.readers for read in reader["reads"]]
    assert reads and all(sigterm_sent for _, sigterm_sent in reads)


def test_each_drain_reads_over_one_reader_closed_when_it_ends(tmp_path: Path) -> None:
    sim = _drained_restart(tmp_path)
    sim.stop_takes = 3.0  # about 7 reads each
    sim.at(60, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    # the restart's drain reads the vLLM it stops (port 8000), not the next one's port
    assert [(r["port"], r["closed"]) for r in sim.readers] == [(8000, True), (8001, True)]
    assert all(len(reader["reads"]) > 1 for reader in sim.readers)


def test_a_crash_is_not_drained(tmp_path: Path) -> None:
    def dies(run: Any) -> None:
        sim.after(5.0, lambda: run.exit(1))

    sim = Sim(
        tmp_path,
        scripts=[boots(5.0, then=dies), boots(5.0)],
        config=sim_config(tmp_path, drain={"announce": 30}),
    )
    sim.at(40, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    # Only the stop at 40 s was drained (announced): the crashed run was stopped at once.
    assert len([r for r in sim.logs if r["event"] == "drain_started"]) == 1
    crashed = sim.runs[0]
    assert crashed.stopped_at is not None and crashed.stopped_at < START + 11  # no announce


# --- the gauges ------------------------------------------------------------------------------

_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 9.0
"""


def test_the_gauges_are_summed_over_their_labels() -> None:
    assert parse_load(_METRICS) == RequestLoad(running=3, waiting=4)


def test_missing_gauges_read_as_unknown() -> None:
    assert parse_load("# nothing here\n") is None


def _read_twice(body: str) -> tuple[tuple[Any, ...], list[httpx.Request], bool]:
    """Two reads of one drain's reader against a /metrics answering `body`: the loads, the
    requests sent and whether the client was closed after."""
    config, _ = _load("")
    requests: list[httpx.Request] = []
    closed = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, text=body)

    class Transport(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    async def main() -> tuple[Any, ...]:
        async with vllm_load_reader(config, Transport(answer)) as read:
            return await read(), await read()

    return asyncio.run(main()), requests, closed == [True]


def test_one_client_reads_vllms_metrics_and_is_closed_after() -> None:
    loads, requests, closed = _read_twice(_METRICS)
    assert loads == (RequestLoad(3, 4), RequestLoad(3, 4))
    assert [str(request.url) for request in requests] == ["http://127.0.0.1:8000/metrics"] * 2
    assert closed


def test_gauges_that_break_the_parsing_in_any_way_read_as_unknown_logged_once() -> None:
    # round(+Inf) raises OverflowError, not the ValueError of a malformed exposition
    with capture_logs() as logs:
        loads, _, closed = _read_twice(
            "vllm:num_requests_running +Inf\nvllm:num_requests_waiting 0\n"
        )
    assert loads == (None, None) and closed
    unreadable = [record for record in logs if record["event"] == "drain_gauges_unreadable"]
    assert len(unreadable) == 1 and unreadable[0]["log_level"] == "warning"
    assert "OverflowError" in unreadable[0]["error"]


# --- the readiness endpoint ------------------------------------------------------------------


def test_the_readiness_endpoint_answers_what_it_is_told() -> None:
    ready = [True]

    async def main() -> list[tuple[int, str]]:
        server = ReadinessServer("127.0.0.1", 0, lambda: ready[0])
        await server.start()
        port = server._runner.addresses[0][1]
        answers = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for state in (True, False):
                ready[0] = state
                response = await client.get("/ready")
                answers.append((response.status_code, response.text))
            answers.append(((await client.get("/health")).status_code, ""))
        await server.close()
        return answers

    assert asyncio.run(main()) == [(200, "ready\n"), (503, "not ready\n"), (404, "")]


# --- the config ------------------------------------------------------------------------------

_BASE = "server: {python: /usr/bin/python3, port: 8000}\nmodel: {path: /m}\n"


def _load(text: str) -> tuple[Any, list[str]]:
    config, problems = parse_config(_BASE + text, environ={})
    return config, [problem.format() for problem in problems]


def test_server_shutdown_timeout_is_a_deprecated_alias_of_drain_timeout() -> None:
    config, problems = _load("")
    assert config is not None and config.drain_timeout is None
    config, problems = _load("drain: {timeout: 30}\n")
    assert config is not None and config.drain_timeout == 30 and problems == []
    config, old = _load_with_old_name("")
    assert config is not None and config.drain_timeout == 9
    assert [(p.path, p.is_error) for p in old] == [("server.shutdown_timeout", False)]
    assert "deprecated" in old[0].message and "rename it to drain.timeout" in old[0].fix


def _load_with_old_name(text: str) -> tuple[Any, list[Problem]]:
    old = _BASE.replace("port: 8000", "port: 8000, shutdown_timeout: 9")
    config, problems = parse_config(old + text, environ={})
    return config, problems


def test_both_drain_timeout_and_its_old_name_is_an_error() -> None:
    config, problems = _load_with_old_name("drain: {timeout: 30}\n")
    assert config is None
    assert [p.path for p in problems] == ["server.shutdown_timeout"]
    assert "both" in problems[0].message


def test_announce_defaults_to_ten_seconds_only_with_a_readiness_listener() -> None:
    config, _ = _load("")
    assert config is not None and config.drain_announce == 0.0
    config, _ = _load("drain: {readiness_listen: '127.0.0.1:8081'}\n")
    assert config is not None and config.drain_announce == 10.0
    config, _ = _load("drain: {readiness_listen: '[::1]:8081', announce: 2}\n")
    assert config is not None and config.drain_announce == 2.0


def test_announce_defaults_to_ten_seconds_with_the_control_apis_tcp_ready() -> None:
    # supervisor.control.listen serves GET /ready to load balancers too
    config, _ = _load("supervisor: {control: {listen: '127.0.0.1:8082'}}\n")
    assert config is not None and config.drain_announce == 10.0
    config, _ = _load("supervisor: {control: {listen: '127.0.0.1:8082'}}\ndrain: {announce: 0}\n")
    assert config is not None and config.drain_announce == 0.0


@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("8081", "'8081' is not HOST:PORT"),
        ("127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),
        ("::1:8081", "must be in brackets"),
    ],
)
def test_a_bad_readiness_listen_is_one_line_naming_the_key(listen: str, says: str) -> None:
    config, problems = _load(f"drain: {{readiness_listen: '{listen}'}}\n")
    assert config is None and len(problems) == 1
    assert "drain.readiness_listen" in problems[0] and says in problems[0]
    assert "HOST:PORT" in problems[0]


def test_drain_keys_say_what_a_reload_of_them_takes() -> None:
    assert class_of("drain.timeout") is KeyClass.RESTART  # it is vLLM's --shutdown-timeout
    assert class_of("drain.announce") is KeyClass.SUPERVISOR
    assert class_of("drain.readiness_listen") is KeyClass.DAEMON


def test_a_readiness_address_that_cannot_be_bound_is_fatal_78_naming_the_key(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = {"readiness_listen": f"127.0.0.1:{port}"}
        sim = Sim(tmp_path, scripts=[boots(5.0)], config=sim_config(tmp_path, drain=listen))
        assert sim.play() == 78
    assert sim.runs == []  # nothing launched
    reason = sim.transition("FATAL")["reason"]
    assert reason.startswith(f"drain.readiness_listen: cannot listen on 127.0.0.1:{port}: ")
