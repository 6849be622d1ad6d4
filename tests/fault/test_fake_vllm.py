"""The fake vLLM (tests/fakevllm) behaves like vLLM 0.32 where the supervisor looks.

Each test starts the fake exactly as the supervisor starts vLLM:
``python -m vllm.entrypoints.openai.api_server ...`` in a new session, with the fake
package first on PYTHONPATH, on a free loopback port. Every wait polls against a
deadline, and the fixture kills each launched process group whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

TESTS = Path(__file__).resolve().parents[1]
FAKE_ROOT = TESTS / "fakevllm"
UNKNOWN_MODEL_JSON = TESTS / "fixtures" / "vllm-logs" / "01-unknown-model-response.json"
START_TIMEOUT = 10.0
LINE_PREFIX = r"^\(APIServer pid=\d+\) INFO \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\] "

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    """Running and not a zombie (orphans may wait a while for their reaper)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the fake and whatever it left behind)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def wait_group_gone(sid: int, timeout: float) -> None:
    wait_until(lambda: not session_members(sid), timeout, f"session {sid} to be empty")


@dataclass
class FakeVllm:
    """One launched fake server: its process, port and captured output."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        # trust_env=False: a proxy from the environment must never see loopback probes.
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", timeout=2.0, trust_env=False
        )

    @property
    def stdout(self) -> str:
        return (self.workdir / "stdout.log").read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return (self.workdir / "stderr.log").read_text(encoding="utf-8", errors="replace")

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.workdir / "state.json").read_text())
        return data

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kwargs)

    def health(self) -> int | None:
        """Status of /health, None while nothing answers."""
        try:
            return self.get("/health", timeout=0.5).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"fake exited {self.proc.returncode}:\n{self.stderr}")
            return self.health() == 200

        wait_until(ready, START_TIMEOUT, "/health 200")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"fake still running after {timeout}s") from None


class Launcher:
    """Starts fakes in their own sessions; ``close`` kills every group it started."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.model = tmp_path / "model"
        self.model.mkdir()
        (self.model / "config.json").write_text(
            json.dumps({"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 512})
        )
        self.adapters: dict[str, Path] = {}
        for name, rank in (("a", 8), ("b", 16), ("big", 64)):
            path = tmp_path / f"adapter-{name}"
            path.mkdir()
            (path / "adapter_config.json").write_text(json.dumps({"r": rank, "bias": "none"}))
            self.adapters[name] = path
        self.started: list[FakeVllm] = []

    def start(
        self,
        *flags: str,
        faults: str = "load_seconds=0.1",
        env: dict[str, str] | None = None,
        serve: bool = False,
    ) -> FakeVllm:
        """Launch like the supervisor: the module form, or ``vllm serve`` if ``serve``."""
        port = free_port()
        workdir = self.tmp_path / f"run{len(self.started)}"
        workdir.mkdir()
        child_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "FAKE_VLLM_"))
        }
        pythonpath = [str(FAKE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        child_env |= {
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "FAKE_VLLM_FAULTS": faults,
            "FAKE_VLLM_STATE_FILE": str(workdir / "state.json"),
            "NO_COLOR": "1",
            **(env or {}),
        }
        if serve:
            argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(self.model)]
        else:
            argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
            argv += ["--model", str(self.model)]
        argv += ["--host", "127.0.0.1", "--port", str(port), *flags]
        with (workdir / "stdout.log").open("wb") as out, (workdir / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=err, env=child_env, cwd=workdir, start_new_session=True
            )
        fake = FakeVllm(proc, port, workdir)
        self.started.append(fake)
        return fake

    def close(self) -> None:
        # Kill every group first, so one slow group cannot leave the others running.
        for fake in self.started:
            fake.http.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(fake.proc.pid, signal.SIGKILL)
        for fake in self.started:
            fake.proc.wait(5)
            wait_group_gone(fake.proc.pid, 5.0)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def lora_flags(launcher: Launcher, *names: str) -> list[str]:
    modules = [f"{name}={launcher.adapters[name]}" for name in names]
    return ["--enable-lora", "--max-loras", "2", "--lora-modules", *modules]


def test_ready_models_shape_and_log_format(launcher: Launcher) -> None:
    fake = launcher.start(
        "--served-model-name", "tiny", "--max-model-len", "256", *lora_flags(launcher, "a", "b")
    )
    fake.wait_ready()

    models = fake.get("/v1/models").json()
    assert models["object"] == "list"
    base, *adapters = models["data"]
    assert (base["id"], base["root"], base["parent"]) == ("tiny", str(launcher.model), None)
    assert base["max_model_len"] == 256
    assert [(a["id"], a["root"], a["parent"]) for a in adapters] == [
        ("a", str(launcher.adapters["a"]), "tiny"),
        ("b", str(launcher.adapters["b"]), "tiny"),
    ]
    assert fake.get("/health").content == b""
    assert fake.get("/version").json() == {"version": "0.32.0"}
    unknown = fake.post("/v1/chat/completions", {"model": "nope", "messages": []})
    assert unknown.status_code == 404
    assert unknown.content == UNKNOWN_MODEL_JSON.read_bytes().strip()
    reply = fake.post("/v1/chat/completions", {"model": "a", "messages": []})
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    metrics = fake.get("/metrics").text
    assert 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a"' in metrics

    out = fake.stdout
    assert "version 0.32.0" in out
    assert f"Loaded new LoRA adapter: name 'a', path '{launcher.adapters['a']}'" in out
    assert f"Starting vLLM server on http://127.0.0.1:{fake.port}" in out
    assert '"GET /v1/models HTTP/1.1" 200 OK' in out  # uvicorn access log: stdout
    assert "INFO:     Application startup complete." in fake.stderr  # uvicorn.error: stderr
    lines = [line for line in out.splitlines() if line.startswith("(APIServer")]
    assert lines
    assert all(re.match(LINE_PREFIX, line) for line in lines if " INFO " in line)
    state = fake.state()
    assert state["ready"] is True
    assert psutil.Process(state["engine_core_pid"]).name() == "VLLM::EngineCore"
    assert psutil.Process(state["worker_pid"]).name() == "VLLM::Worker"
    assert os.getpgid(state["engine_core_pid"]) == fake.proc.pid


def test_unknown_flag_exits_2_like_argparse(launcher: Launcher) -> None:
    fake = launcher.start("--swap-space", "4")
    assert fake.wait_exit(START_TIMEOUT) == 2
    assert fake.stderr.rstrip().endswith(
        "api_server.py: error: unrecognized arguments: --swap-space"
    )


def test_serve_launcher_form_serves_and_rejects_unknown_flags(launcher: Launcher) -> None:
    fake = launcher.start("--served-model-name", "tiny", serve=True)
    fake.wait_ready()
    assert [card["id"] for card in fake.get("/v1/models").json()["data"]] == ["tiny"]
    assert "'model_tag': " in fake.stdout
    bad = launcher.start("--swap-space", serve=True)
    assert bad.wait_exit(START_TIMEOUT) == 2
    assert bad.stderr.rstrip().endswith("main.py: error: unrecognized arguments: --swap-space")


def test_exit_at_start_fault_exits_2(launcher: Launcher) -> None:
    fake = launcher.start(faults="exit_at_start")
    assert fake.wait_exit(START_TIMEOUT) == 2
    assert "error: unrecognized arguments:" in fake.stderr


def test_engine_death_gives_503_with_models_200_then_exit_0(launcher: Launcher) -> None:
    fake = launcher.start(
        faults="load_seconds=0.1,engine_death_after=0.2,engine_death_exit_after=1.5"
    )
    fake.wait_ready()
    wait_until(lambda: fake.health() == 503, 3.0, "/health 503")
    assert fake.get("/v1/models").status_code == 200
    assert fake.wait_exit(5.0) == 0
    assert "EngineCore encountered a fatal error." in fake.stdout
    assert "EngineDeadError: EngineCore encountered an issue." in fake.stdout
    wait_group_gone(fake.proc.pid, 3.0)


def test_killing_the_engine_from_outside_is_engine_death(launcher: Launcher) -> None:
    fake = launcher.start(faults="load_seconds=0.1,engine_death_exit_after=0.5")
    fake.wait_ready()
    os.kill(fake.state()["engine_core_pid"], signal.SIGKILL)
    wait_until(lambda: fake.health() == 503, 3.0, "/health 503")
    assert fake.wait_exit(5.0) == 0
    assert "engine core exited unexpectedly" in fake.stdout


LORA_DEBUG = "The following fields were present in the request but ignored: {'lora_name'}"


def test_lora_name_debug_line_hidden_by_default(launcher: Launcher) -> None:
    fake = launcher.start(*lora_flags(launcher, "a"))
    fake.wait_ready()
    reply = fake.post("/v1/completions", {"model": "a", "prompt": "hi", "lora_name": "a"})
    assert reply.status_code == 200
    assert LORA_DEBUG not in fake.stdout + fake.stderr


def test_lora_name_debug_line_shown_with_logging_config(launcher: Launcher, tmp_path: Path) -> None:
    # The config VLLM_FACTS.md describes: the vllm logger stays at INFO, its handler lets
    # DEBUG through, and only the protocol logger is lowered to DEBUG.
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "vllm": {
                "()": "vllm.logging_utils.NewLineFormatter",
                "datefmt": "%m-%d %H:%M:%S",
                "format": "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s "
                "[%(fileinfo)s:%(lineno)d] %(message)s",
            }
        },
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": "DEBUG",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
            "vllm.entrypoints.serve.engine.protocol": {"level": "DEBUG"},
        },
    }
    config_path = tmp_path / "logging.json"
    config_path.write_text(json.dumps(config))
    fake = launcher.start(
        *lora_flags(launcher, "a"), env={"VLLM_LOGGING_CONFIG_PATH": str(config_path)}
    )
    fake.wait_ready()
    reply = fake.post("/v1/completions", {"model": "a", "prompt": "hi", "lora_name": "a"})
    assert reply.status_code == 200
    debug_lines = [line for line in fake.stdout.splitlines() if LORA_DEBUG in line]
    assert len(debug_lines) == 1
    assert " DEBUG " in debug_lines[0]
    assert "[protocol.py:72]" in debug_lines[0]
    # As with real vLLM, the custom config also replaces uvicorn's: no uvicorn lines.
    assert "Application startup complete." not in fake.stderr


def test_sigterm_exits_0_quickly_and_leaves_no_process(launcher: Launcher) -> None:
    fake = launcher.start(*lora_flags(launcher, "a"))
    fake.wait_ready()
    state = fake.state()
    started = time.monotonic()
    os.kill(fake.proc.pid, signal.SIGTERM)  # the leader only: the fake must clean up itself
    assert fake.wait_exit(3.0) == 0
    assert time.monotonic() - started < 1.5
    wait_group_gone(fake.proc.pid, 3.0)
    assert not alive(state["engine_core_pid"])
    assert not alive(state["worker_pid"])
    assert "[shutdown] API server: shutdown triggered" in fake.stdout


def test_sigkill_of_api_server_orphans_engine_in_its_group(launcher: Launcher) -> None:
    fake = launcher.start()
    fake.wait_ready()
    state = fake.state()
    os.kill(fake.proc.pid, signal.SIGKILL)
    assert fake.wait_exit(3.0) == -signal.SIGKILL
    engine = psutil.Process(state["engine_core_pid"])
    assert alive(engine.pid)
    assert engine.name() == "VLLM::EngineCore"
    assert engine.ppid() != fake.proc.pid  # reparented, like 03-orphans.txt
    assert os.getpgid(engine.pid) == fake.proc.pid  # still in the dead leader's group
    assert alive(state["worker_pid"])
    os.killpg(fake.proc.pid, signal.SIGKILL)
    wait_group_gone(fake.proc.pid, 3.0)


def test_ignore_sigterm_with_stubborn_children_needs_sigkill(launcher: Launcher) -> None:
    fake = launcher.start(faults="load_seconds=0.1,ignore_sigterm,stubborn_children")
    fake.wait_ready()
    os.killpg(fake.proc.pid, signal.SIGTERM)
    with pytest.raises(AssertionError, match="still running"):
        fake.wait_exit(0.5)
    assert len(session_members(fake.proc.pid)) == 3
    assert fake.health() == 200
    os.killpg(fake.proc.pid, signal.SIGKILL)
    wait_group_gone(fake.proc.pid, 3.0)


def test_sigterm_while_loading_dies_like_keyboard_interrupt(launcher: Launcher) -> None:
    fake = launcher.start(faults="load_seconds=30")
    wait_until(lambda: "Starting to load model" in fake.stdout, START_TIMEOUT, "loading")
    assert fake.health() is None  # bound but not listening while the model loads
    os.kill(fake.proc.pid, signal.SIGTERM)
    assert fake.wait_exit(3.0) == -signal.SIGINT
    assert "KeyboardInterrupt: terminated" in fake.stderr
    wait_group_gone(fake.proc.pid, 3.0)


def test_port_in_use_exits_1_before_loading(launcher: Launcher) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fake = launcher.start("--port", str(port))  # the last --port wins, as in argparse
        assert fake.wait_exit(START_TIMEOUT) == 1
    assert fake.stderr.rstrip().endswith("OSError: [Errno 98] Address already in use")
    assert "Starting to load model" not in fake.stdout


def test_rank_above_max_fails_after_load(launcher: Launcher) -> None:
    fake = launcher.start(*lora_flags(launcher, "a", "big"))
    assert fake.wait_exit(START_TIMEOUT) == 1
    assert "LoRA rank 64 is greater than max_lora_rank 16." in fake.stdout
    assert "Loading weights took" in fake.stdout
    assert fake.stderr.rstrip().endswith("please check the stack trace above for the root cause")


def test_missing_model_path_exits_1(launcher: Launcher, tmp_path: Path) -> None:
    fake = launcher.start("--model", str(tmp_path / "nowhere"))
    assert fake.wait_exit(START_TIMEOUT) == 1
    assert "Invalid repository ID or local directory specified" in fake.stderr


def test_api_key_guards_v1_only(launcher: Launcher) -> None:
    fake = launcher.start(env={"VLLM_API_KEY": "sekrit"})
    fake.wait_ready()
    assert fake.get("/v1/models").status_code == 401
    auth = {"Authorization": "Bearer sekrit"}
    assert fake.get("/v1/models", headers=auth).status_code == 200
    assert fake.get("/health").status_code == 200
    assert fake.get("/metrics").status_code == 200


def test_runtime_lora_load_and_unload(launcher: Launcher) -> None:
    fake = launcher.start(
        *lora_flags(launcher, "a"), env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    )
    fake.wait_ready()
    load = "/v1/load_lora_adapter"
    ok = fake.post(load, {"lora_name": "b", "lora_path": str(launcher.adapters["b"])})
    assert (ok.status_code, ok.text) == (200, "Success: LoRA adapter 'b' added successfully.")
    assert fake.post(load, {"lora_name": "b", "lora_path": "x"}).status_code == 400
    assert fake.post(load, {"lora_name": "c", "lora_path": "/nonexistent"}).status_code == 404
    big = fake.post(load, {"lora_name": "c", "lora_path": str(launcher.adapters["big"])})
    assert big.status_code == 500
    assert "LoRA rank 64 is greater than max_lora_rank 16." in big.json()["error"]["message"]
    unload = "/v1/unload_lora_adapter"
    assert fake.post(unload, {"lora_name": "b"}).status_code == 200
    assert fake.post(unload, {"lora_name": "b"}).status_code == 404


def test_runtime_lora_routes_absent_by_default(launcher: Launcher) -> None:
    fake = launcher.start()
    fake.wait_ready()
    reply = fake.post("/v1/load_lora_adapter", {"lora_name": "b", "lora_path": "x"})
    assert reply.status_code == 404


def test_hang_after_accepts_but_never_answers(launcher: Launcher) -> None:
    fake = launcher.start(faults="load_seconds=0.1,hang_after=0")
    fake.wait_ready()
    wait_until(lambda: fake.health() is None, 3.0, "HTTP to stop answering")
    with pytest.raises(httpx.ReadTimeout):
        fake.get("/health", timeout=0.3)
    assert fake.proc.poll() is None


def test_data_parallel_ranks_out_of_range_400_and_each_engine_counts_its_requests(
    launcher: Launcher,
) -> None:
    fake = launcher.start("--data-parallel-size", "2")
    fake.wait_ready()
    body = {"prompt": "Hello", "max_tokens": 1}
    for rank, status in (("0", 200), ("1", 200), ("1", 200), ("2", 400)):
        answer = fake.post("/v1/completions", body, headers={"X-data-parallel-rank": rank})
        assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"] == "data_parallel_rank 2 is out of range [0, 2)."
    metrics = fake.get("/metrics").text
    finished = {
        line.split('engine="')[1][0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:request_success_total") and 'finished_reason="length"' in line
    }
    assert finished == {"0": 1.0, "1": 2.0}


def test_a_slow_rank_answers_late_and_no_completions_is_a_404(launcher: Launcher) -> None:
    slow = launcher.start(
        "--data-parallel-size", "2", faults="load_seconds=0.1,rank_slow_after=0,slow_rank_seconds=1"
    )
    slow.wait_ready()
    body = {"prompt": "Hello", "max_tokens": 1}
    pinned = {"X-data-parallel-rank": "1"}

    def late() -> bool:  # the switch fires in the main loop just after ready
        try:
            slow.post("/v1/completions", body, headers=pinned, timeout=0.3)
        except httpx.ReadTimeout:
            return True
        return False

    wait_until(late, 3.0, "rank 1 to answer late")
    answer = slow.post("/v1/completions", body, headers={"X-data-parallel-rank": "1"}, timeout=5)
    assert answer.status_code == 200
    pooling = launcher.start(faults="load_seconds=0.1,no_completions")
    pooling.wait_ready()
    assert pooling.post("/v1/completions", body).status_code == 404


def test_crash_after_prints_traceback_and_exits_1(launcher: Launcher) -> None:
    fake = launcher.start(faults="load_seconds=0.1,crash_after=0.1")
    assert fake.wait_exit(START_TIMEOUT) == 1
    assert "Traceback (most recent call last):" in fake.stderr
    wait_group_gone(fake.proc.pid, 3.0)


def test_exit_zero_after_exits_silently(launcher: Launcher) -> None:
    fake = launcher.start(faults="load_seconds=0.1,exit_zero_after=0.1")
    fake.wait_ready()
    before = fake.stdout
    assert fake.wait_exit(3.0) == 0
    assert "shutdown" not in fake.stdout[len(before) :]
    wait_group_gone(fake.proc.pid, 3.0)


def test_drop_adapter_after_removes_first_adapter(launcher: Launcher) -> None:
    fake = launcher.start(
        *lora_flags(launcher, "a", "b"), faults="load_seconds=0.1,drop_adapter_after=0.2"
    )
    fake.wait_ready()

    def ids() -> list[str]:
        return [card["id"] for card in fake.get("/v1/models").json()["data"]]

    wait_until(lambda: "a" not in ids(), 3.0, "adapter a to disappear")
    assert "b" in ids()
    assert fake.post("/v1/completions", {"model": "a", "prompt": "x"}).status_code == 404
