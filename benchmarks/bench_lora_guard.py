"""What does the `lora_name` guard middleware cost a request that does not carry the field?

One vLLM server (the CPU build) on the demo model, started with the launch plan's exact command
line for `lora.lora_name_field: route`, except that the middleware vLLM imports is a thin
benchmark wrapper (`bench_guard_toggle.Toggle`, written beside the guard): it hands a request
to the guard, or, when the request carries the header `x-niodoo-bench: plain`, straight to
vLLM. Both kinds look at the same header, so the difference between them is the guard's work
alone, measured in the same process, on the same connection, with the same engine and cores.
A small chat completion (`max_tokens` 2, temperature 0, model `tiny`, no `lora_name`) is sent
one request at a time in ABBA order (guarded, plain, plain, guarded, ...). Latency is from the
request's first byte sent to the answer's last byte read, measured by the client.

Printed: p50 and p99 of each and the ratio guarded/plain (target <= 1.02), then the same for
requests that carry the field (`{"model": "tiny", "lora_name": "alpha"}`, routed by the guard)
against `"model": "alpha"` sent past the guard. First, the guard's own time in this process:
the middleware in front of an app that reads the body as vLLM does, against that app alone
(medians of interleaved rounds).

An earlier version compared two servers, one with and one without the middleware: on a 2-core
machine their placement and start order moved the p50 ratio between 0.4 and 5.6, far more than
the middleware's microseconds, so the comparison is now made inside one server.

Usage: NIODOO_VLLM_PYTHON=<vLLM's python> python benchmarks/bench_lora_guard.py [REQUESTS]
(run `make demo-model` first). Not part of the test suite; asserts only that every answer is
200.
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
from niodoo_supervisor.launch.lora_guard import GUARD_MIDDLEWARE, write_guard
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "var" / "demo-model"
START_TIMEOUT = 400.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BYPASS = ("x-niodoo-bench", "plain")
_TOGGLE = f'''"""A benchmark wrapper: the lora_name guard, or vLLM directly (header {BYPASS[0]}: {BYPASS[1]})."""
from niodoo_lora_guard import LoraNameGuard


class Toggle:
    def __init__(self, app):
        self.app = app
        self.guard = LoraNameGuard(app)

    async def __call__(self, scope, receive, send):
        for name, value in scope.get("headers", ()):
            if name == b"{BYPASS[0]}" and value == b"{BYPASS[1]}":
                return await self.app(scope, receive, send)
        return await self.guard(scope, receive, send)
'''


def _plan(tmp: Path, mode: str, python: str) -> tuple[LaunchPlan, int]:
    document = yaml.safe_load((REPO / "config" / "demo-cpu.yaml").read_text())
    port = _free_port()
    document["server"].update(python=python, port=port)
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
    assert plan.lora_guard is not None and GUARD_MIDDLEWARE in plan.argv
    write_guard(plan.lora_guard)
    (plan.lora_guard.folder / "bench_guard_toggle.py").write_text(_TOGGLE)
    argv = [("bench_guard_toggle.Toggle" if arg == GUARD_MIDDLEWARE else arg) for arg in plan.argv]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
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


def _timed(client: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body, headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _compare(
    title: str,
    guard: tuple[httpx.Client, dict[str, Any], dict[str, str]],
    plain: tuple[httpx.Client, dict[str, Any], dict[str, str]],
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
    print(f"  {'through the guard':22} {p50['guard']:9.2f} {p99['guard']:9.2f}")
    print(f"  {'past it':22} {p50['plain']:9.2f} {p99['plain']:9.2f}")
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
    python = os.environ.get("NIODOO_VLLM_PYTHON")
    if not python:
        sys.exit("set NIODOO_VLLM_PYTHON to the python of vLLM's environment")
    if not (MODEL / "base").is_dir():
        sys.exit("run `make demo-model` first")
    with tempfile.TemporaryDirectory(prefix="bench-lora-guard-") as folder, ExitStack() as stack:
        tmp = Path(folder)
        _in_process(tmp)
        plan, port = _plan(tmp, "route", python)
        log = tmp / "route.log"
        process = _start(plan, log)
        stack.callback(_stop, process)
        client = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
        )
        _wait_ready(client, process, log)
        guarded: dict[str, str] = {}
        plain = dict([BYPASS])
        base = {
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 2,
            "temperature": 0,
        }
        _compare(
            "A request without lora_name (model tiny)",
            (client, {**base, "model": "tiny"}, guarded),
            (client, {**base, "model": "tiny"}, plain),
            requests,
        )
        _compare(
            "lora_name routed by the guard vs. model alpha sent past it",
            (client, {**base, "model": "tiny", "lora_name": "alpha"}, guarded),
            (client, {**base, "model": "alpha"}, plain),
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
