"""What does the `lora_name` guard middleware cost a request that does not carry the field?

Two vLLM servers (the CPU build) on the demo model, started with the launch plan's exact
command lines: one with `lora.lora_name_field: route` (the middleware in front), one with
`log` (no middleware). A small chat completion (`max_tokens` 2, temperature 0, model `tiny`,
no `lora_name`) is sent to them one request at a time, in ABBA order (guard, plain, plain,
guard, ...), so both see the same machine state over the run and never compete with each
other for the 2 cores; each keeps one keep-alive connection. Latency is from the request's
first byte sent to the answer's last byte read, measured by the client.

Printed: p50 and p99 of each, and the ratio guard/plain (target <= 1.02), then the same for
requests that carry the field (`{"model": "tiny", "lora_name": "alpha"}` through the guard,
routed) against the plain server asked for `"model": "alpha"` directly.

Two servers are two processes on a machine others share, each engine bound to a core of its
own (guard: core GUARD_CORE, plain: the other): their difference is not all the middleware's,
and a run with the cores swapped shows how much is the cores'. So the guard's own time is
measured first, in this process: the middleware in front of an app that reads the body as
vLLM does, against that app alone, on the same chat body (medians of interleaved rounds).

Usage: NIODOO_VLLM_PYTHON=<vLLM's python> python benchmarks/bench_lora_guard.py [REQUESTS
[GUARD_CORE [plain-first]]] (run `make demo-model` first; GUARD_CORE 0 or 1, default 0;
`plain-first` starts the server without the middleware first). Not part of the test suite;
asserts only that every answer is 200.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import yaml

from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.launch.guard.niodoo_lora_guard import LoraNameGuard
from niodoo_supervisor.launch.lora_guard import write_guard
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "var" / "demo-model"
START_TIMEOUT = 400.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plan(tmp: Path, mode: str, python: str, core: int) -> tuple[LaunchPlan, int]:
    document = yaml.safe_load((REPO / "config" / "demo-cpu.yaml").read_text())
    port = _free_port()
    document["server"].update(python=python, port=port)
    # Left to itself the CPU build binds every server's worker to core 0: two servers then
    # share it and whichever spins slows the other (p50 ratios of 0.4 to 5.6 were seen).
    document["server"]["env"]["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
    document["model"]["path"] = str(MODEL / "base")
    document["lora"]["adapters"] = [
        {"name": name, "path": str(MODEL / "adapters" / name)} for name in ("alpha", "beta")
    ]
    document["lora"]["lora_name_field"] = mode
    document["supervisor"]["state_dir"] = str(tmp / mode)
    path = tmp / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, dict(os.environ))
    assert config is not None, [problem.format() for problem in problems]
    return plan_launch(config, None, os.environ), port


def _start(plan: LaunchPlan, log: Path) -> subprocess.Popen[bytes]:
    if plan.logging_config is not None:
        plan.logging_config_path.parent.mkdir(parents=True, exist_ok=True)
        plan.logging_config_path.write_text(json.dumps(plan.logging_config))
    if plan.lora_guard is not None:
        write_guard(plan.lora_guard)
    with log.open("wb") as out:
        return subprocess.Popen(
            plan.argv,
            env=plan.child_environment(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"vLLM exited with {process.returncode}; see {log}")
        try:
            names = {item["id"] for item in client.get("/v1/models").json()["data"]}
            if {"tiny", "alpha"} <= names:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    sys.exit(f"vLLM not ready after {START_TIMEOUT:g}s; see {log}")


def _timed(client: httpx.Client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _compare(
    title: str,
    guard: tuple[httpx.Client, dict[str, Any]],
    plain: tuple[httpx.Client, dict[str, Any]],
    requests: int,
) -> None:
    times: dict[str, list[float]] = {"guard": [], "plain": []}
    for _ in range(10):  # warm-up, not counted
        _timed(*guard)
        _timed(*plain)
    for n in range(requests):
        order = ("guard", "plain") if n % 2 == 0 else ("plain", "guard")  # ABBA
        for side in order:
            times[side].append(_timed(*(guard if side == "guard" else plain)))
    p50 = {side: statistics.median(values) * 1000 for side, values in times.items()}
    p99 = {side: _percentile(values, 0.99) * 1000 for side, values in times.items()}
    print(f"\n{title} ({requests} requests each, interleaved ABBA)")
    print(f"  {'':22} {'p50 ms':>9} {'p99 ms':>9}")
    print(f"  {'with the middleware':22} {p50['guard']:9.2f} {p99['guard']:9.2f}")
    print(f"  {'without':22} {p50['plain']:9.2f} {p99['plain']:9.2f}")
    print(
        f"  ratio with/without:    p50 {p50['guard'] / p50['plain']:.3f}"
        f"   p99 {p99['guard'] / p99['plain']:.3f}"
    )


def _in_process(tmp: Path, rounds: int = 7, calls: int = 20000) -> None:
    """The guard's own time per request, without and with the field (routed)."""
    settings = tmp / "settings.json"
    settings.write_text(
        json.dumps({"mode": "route", "served_model": "tiny", "adapters": ["alpha"]})
    )
    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}
    plain_body = json.dumps({**chat, "model": "tiny"}).encode()
    field_body = json.dumps({**chat, "model": "tiny", "lora_name": "alpha"}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}

    async def vllm_like(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    async def send(message: Any) -> None:
        return None

    async def timed(app: Any, body: bytes) -> float:
        message = {"type": "http.request", "body": body, "more_body": False}

        async def receive() -> Any:
            return message

        started = time.perf_counter()
        for _ in range(calls):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / calls * 1e6

    guard = LoraNameGuard(vllm_like, str(settings))
    logging.getLogger("vllm").setLevel(logging.WARNING)  # the routed line, 20000 times
    cases = {
        "app alone": (vllm_like, plain_body),
        "guard, no field": (guard, plain_body),
        "guard, lora_name routed": (guard, field_body),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (app, body) in cases.items():
            times[name].append(asyncio.run(timed(app, body)))
    alone = statistics.median(times["app alone"])
    print(f"The middleware in this process ({calls} calls x {rounds} rounds, medians)")
    for name, values in times.items():
        extra = statistics.median(values) - alone
        print(f"  {name:26} {statistics.median(values):7.2f} us/request   +{extra:.2f} us")


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    guard_core = int(sys.argv[2]) if len(sys.argv) > 2 else 0  # run with 0, then 1
    plain_first = len(sys.argv) > 3 and sys.argv[3] == "plain-first"  # the start order
    python = os.environ.get("NIODOO_VLLM_PYTHON")
    if not python:
        sys.exit("set NIODOO_VLLM_PYTHON to the python of vLLM's environment")
    if not (MODEL / "base").is_dir():
        sys.exit("run `make demo-model` first")
    with tempfile.TemporaryDirectory(prefix="bench-lora-guard-") as folder, ExitStack() as stack:
        tmp = Path(folder)
        _in_process(tmp)
        servers: dict[str, httpx.Client] = {}
        cores = {"route": guard_core, "log": 1 - guard_core}
        for mode in ("log", "route") if plain_first else ("route", "log"):
            plan, port = _plan(tmp, mode, python, cores[mode] % (os.cpu_count() or 1))
            log = tmp / f"{mode}.log"
            process = _start(plan, log)
            stack.callback(_stop, process)
            client = stack.enter_context(
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
            )
            _wait_ready(client, process, log)  # one at a time: starts compete for the cores
            servers[mode] = client
        guard, plain = servers["route"], servers["log"]
        base = {
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 2,
            "temperature": 0,
        }
        _compare(
            "A request without lora_name (model tiny)",
            (guard, {**base, "model": "tiny"}),
            (plain, {**base, "model": "tiny"}),
            requests,
        )
        _compare(
            "lora_name routed by the middleware vs. model alpha sent directly",
            (guard, {**base, "model": "tiny", "lora_name": "alpha"}),
            (plain, {**base, "model": "alpha"}),
            max(20, requests // 4),
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
