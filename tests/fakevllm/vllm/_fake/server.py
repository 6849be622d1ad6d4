"""The API server process: vLLM 0.32's start-up sequence, main loop and exits.

Start-up, after ``launch.main`` parsed the arguments and configured logging, in vLLM's
order: banner and ``non-default args``, bind the port (exit 1 if taken), validate the
model and config (exit 1), fork the engine, wait for it to load, load static adapters
(exit 1 on a bad one), log the routes, then uvicorn's lines and serve.

Signals are never handled asynchronously: SIGTERM/SIGINT are blocked before any thread
or child exists and taken with ``sigtimedwait`` by the main loop, which also drains the
engine's events and fires the fault timers.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vllm import __version__
from vllm._fake import texts
from vllm._fake.cli import non_default_args
from vllm._fake.endpoints import FakeHTTPServer, log_add_lora_failure
from vllm._fake.engine import EngineSpec
from vllm._fake.engine_client import EngineClient, EngineEvent, spawn_engine
from vllm._fake.faults import Faults
from vllm._fake.headless import run_headless
from vllm._fake.logs import (
    configure_uvicorn_logging,
    emit,
    logo_formatter,
    raw,
    set_process_name,
    uvicorn_info,
    uvicorn_shutdown_lines,
)
from vllm._fake.models import Adapter, AdapterProblem, ServingState, check_adapter

__all__ = ["ApiServer"]

_INFO, _WARNING, _ERROR = logging.INFO, logging.WARNING, logging.ERROR
_POLL = 0.05
_CRASH_REASON = "fake crash injected by FAKE_VLLM_FAULTS=crash_after"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true")


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _exit_code(status: int) -> int:
    """A wait status as ``Popen.returncode`` shows it (negative = killed by a signal)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class ApiServer:
    def __init__(
        self,
        parser: argparse.ArgumentParser,
        args: argparse.Namespace,
        faults: Faults,
        custom_log_config: dict[str, Any] | None,
        stop_signals: set[signal.Signals],
    ) -> None:
        self.parser = parser
        self.args = args
        self.faults = faults
        self.custom_log_config = custom_log_config
        self.stop_signals = stop_signals
        self.events: queue.Queue[EngineEvent] = queue.Queue()
        self.engine: EngineClient | None = None
        self.http: FakeHTTPServer | None = None
        self.sock: socket.socket | None = None
        self.ready = False
        self.timers: dict[str, float] = {}
        self.late_adapters: list[Adapter] = []  # hidden until the adapters_late fault ends
        config = self._model_config()
        self.architecture = str((config.get("architectures") or ["Qwen2ForCausalLM"])[0])
        max_len = args.max_model_len or int(config.get("max_position_embeddings") or 2048)
        self.state = ServingState(
            model_path=args.model,
            served_names=list(args.served_model_name or [args.model]),
            max_model_len=max_len,
            enable_lora=args.enable_lora,
            max_loras=args.max_loras,
            max_lora_rank=args.max_lora_rank,
            data_parallel_size=args.data_parallel_size,
        )
        self.state.no_completions = self.faults.no_completions

    def _model_config(self) -> dict[str, Any]:
        try:
            config = json.loads((Path(self.args.model) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return config if isinstance(config, dict) else {}

    # ----- start-up -------------------------------------------------------------------

    def run(self) -> int:
        set_process_name("APIServer")
        try:
            return self._run()
        finally:
            if self.http is not None:
                self.http.stop()
            elif self.sock is not None:
                self.sock.close()
            sys.stdout.flush()
            sys.stderr.flush()

    def _run(self) -> int:
        args = self.args
        if self.faults.chatty_lines:
            threading.Thread(
                target=_chatter, args=(int(self.faults.chatty_lines),), daemon=True
            ).start()
        if logo_formatter(texts.BANNER):
            emit(texts.BANNER, _INFO, texts.LOGO, __version__, args.model)
        else:
            emit(
                texts.BANNER,
                _INFO,
                "vLLM server version %s, serving model %s",
                __version__,
                args.model,
            )
        emit(
            texts.NON_DEFAULT_ARGS,
            _INFO,
            "non-default args: %s",
            non_default_args(self.parser, args),
        )
        if getattr(args, "headless", False):
            return run_headless(self)
        host = args.host or ""
        try:
            self.sock = socket.socket(socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, args.port))
        except OSError as e:
            raw(texts.port_in_use(e.errno or 0, e.strerror or str(e)))
            return 1
        if not Path(args.model).is_dir():
            raw(texts.invalid_model(args.model))
            return 1
        if args.max_cpu_loras is not None and args.max_cpu_loras < args.max_loras:
            message = (
                f"max_cpu_loras ({args.max_cpu_loras}) must be >= max_loras ({args.max_loras})."
            )
            raw(texts.config_error("LoRAConfig", message))
            return 1
        emit(texts.ARCHITECTURE, _INFO, "Resolved architecture: %s", self.architecture)
        emit(texts.MAX_MODEL_LEN, _INFO, "Using max model len %d", self.state.max_model_len)
        self.engine = spawn_engine(self.engine_spec(), self.events)
        self.state.engine_pid = self.engine.pid
        outcome = self._wait_until_ready()
        if outcome is not None:
            return outcome
        return self._start_serving()

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(
            model=self.args.model,
            served_name=self.state.served_names[0],
            max_model_len=self.state.max_model_len,
            dtype=self.args.dtype,
            load_seconds=self.faults.load_seconds,
            shutdown_timeout=self.args.shutdown_timeout,
            stubborn=self.faults.stubborn_children,
        )

    def _wait_until_ready(self) -> int | None:
        """None once the engine is ready, else the exit code of a failed start."""
        while True:
            if self._take_signal(_POLL) is not None:
                return self._interrupted_during_init()
            for event in self._drain():
                if event.kind == "worker":
                    self.state.worker_pid = event.value
                    self._write_state()
                elif event.kind == "ready":
                    return None
                elif event.kind == "exit":
                    return self._engine_failed_to_start(event.value)

    def _start_serving(self) -> int:
        args, state = self.args, self.state
        emit(texts.SUPPORTED_TASKS, _INFO, "Supported tasks: %s", ["generate"])
        emit(
            texts.SCALE_OUT,
            _INFO,
            "Scale-out endpoints are disabled. Restart vllm serve with --enable-scale-out to "
            "enable them.",
        )
        runtime_lora = _env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING")
        if runtime_lora:
            emit(
                texts.RUNTIME_LORA,
                _WARNING,
                "LoRA dynamic loading & unloading is enabled in the API server. This should "
                "ONLY be used for local development!",
            )
        for module in args.lora_modules or []:
            problem = check_adapter(module.name, module.path, args.max_lora_rank, args.enable_lora)
            if problem is not None:
                return self._static_lora_failed(problem)
            state.add_adapter(Adapter(module.name, module.path, module.base_model_name))
        emit(
            texts.CHAT_TEMPLATE,
            _INFO,
            "Detected the chat template content format to be 'string'. You can set "
            "`--chat-template-content-format` to override this.",
        )
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        host_part = f"[{host}]" if _is_ipv6(host) else args.host or "0.0.0.0"
        emit(texts.STARTING, _INFO, "Starting vLLM server on %s", f"http://{host_part}:{port}")
        emit(texts.ROUTES, _INFO, "Available routes are:")
        routes = list(texts.ROUTE_LINES)
        if runtime_lora:
            routes += [("/v1/load_lora_adapter", "POST"), ("/v1/unload_lora_adapter", "POST")]
        for path, methods in routes:
            emit(texts.ROUTE, _INFO, "Route: %s, Methods: %s", path, methods)
        access_log = not args.disable_uvicorn_access_log
        configure_uvicorn_logging(self.custom_log_config, args.uvicorn_log_level, access_log)
        api_keys = [k for k in (args.api_key or [os.environ.get("VLLM_API_KEY")]) if k]
        self.http = FakeHTTPServer(
            self.sock,
            state,
            api_keys=api_keys,
            access_log=access_log,
            runtime_lora=runtime_lora,
            chunk_seconds=self.faults.stream_chunk_seconds,
        )
        uvicorn_info("Started server process [%d]", os.getpid())
        uvicorn_info("Waiting for application startup.")
        uvicorn_info("Application startup complete.")
        # Written before listening, so a test that got /health 200 reads "ready": true.
        self.ready = True
        self._write_state()
        # uvicorn logs startup before it listens, so the line can precede the port by a hair.
        self.http.start()
        self._arm_timers()
        return self._serve()

    # ----- main loop ------------------------------------------------------------------

    def _arm_timers(self) -> None:
        now = time.monotonic()
        for name, after in (
            ("crash", self.faults.crash_after),
            ("engine_death", self.faults.engine_death_after),
            ("hang", self.faults.hang_after),
            ("rank_hang", self.faults.rank_hang_after),
            ("rank_slow", self.faults.rank_slow_after),
            ("drop_adapter", self.faults.drop_adapter_after),
            ("exit_zero", self.faults.exit_zero_after),
            ("adapters_late", self.faults.adapters_late),
        ):
            if after is not None:
                self.timers[name] = now + after
        if self.faults.adapters_late is not None:
            self.late_adapters = self.state.adapters()
            for adapter in self.late_adapters:
                self.state.remove_adapter(adapter.name, quietly=True)

    def _serve(self) -> int:
        while True:
            if self._take_signal(_POLL) is not None:
                return self._shutdown()
            for event in self._drain():
                if event.kind == "exit":
                    self._on_engine_death()
            now = time.monotonic()
            for name, deadline in sorted(self.timers.items(), key=lambda item: item[1]):
                if deadline > now:
                    continue
                del self.timers[name]
                code = self._fire(name)
                if code is not None:
                    return code

    def _engine(self) -> EngineClient:
        assert self.engine is not None, "the engine is spawned before anything uses it"
        return self.engine

    def _fire(self, name: str) -> int | None:
        engine = self._engine()
        if name == "crash":
            raw(texts.crash(_CRASH_REASON))
            # multiprocessing's exit hook terminates vLLM's daemonic engine process.
            engine.terminate(wait=1.0)
            return 1
        if name == "engine_death":
            engine.inject_fatal_error()
        elif name == "hang":
            self.state.hung = True
        elif name == "rank_hang":
            self.state.hung_rank = int(self.faults.hang_rank)
        elif name == "rank_slow":
            self.state.slow_seconds = self.faults.slow_rank_seconds
            self.state.slow_rank = int(self.faults.slow_rank)
        elif name == "drop_adapter":
            adapters = self.state.adapters()
            if adapters:
                self.state.remove_adapter(adapters[0].name, quietly=True)
        elif name == "adapters_late":
            for adapter in self.late_adapters:
                self.state.add_adapter(adapter)
        elif name == "exit_zero":
            engine.kill_all()
            return 0
        elif name == "death_exit":
            uvicorn_shutdown_lines()
            engine.kill_all()
            return 0
        return None

    def _take_signal(self, timeout: float) -> signal.Signals | None:
        info = signal.sigtimedwait(self.stop_signals, timeout)
        return None if info is None else signal.Signals(info.si_signo)

    def _drain(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        with contextlib.suppress(queue.Empty):
            while True:
                events.append(self.events.get_nowait())
        return events

    # ----- endings --------------------------------------------------------------------

    def _on_engine_death(self) -> None:
        """The engine died while serving: 02-enginecore-killed.log."""
        if self.state.engine_dead:
            return
        self.state.engine_dead = True
        emit(
            texts.MP_UNEXPECTED,
            _WARNING,
            "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup",
        )
        self._engine().shutdown("default", stop_engine=False)
        emit(texts.OUTPUT_HANDLER_FAILED, _ERROR, texts.output_handler_failed())
        if not _env_flag("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH"):
            self.timers["death_exit"] = time.monotonic() + self.faults.engine_death_exit_after

    def _shutdown(self) -> int:
        """SIGTERM or SIGINT while serving: the end of 01-start-requests-sigterm.log."""
        timeout = self.args.shutdown_timeout
        emit(texts.SHUTDOWN_TRIGGERED, _INFO, "[shutdown] API server: shutdown triggered")
        emit(
            texts.SHUTDOWN_STOPPING_CLIENT,
            _INFO,
            "[shutdown] API server: stopping engine client mode=%s timeout=%ss",
            "abort" if timeout == 0 else "drain",
            timeout,
        )
        if timeout:
            self._drain_requests(timeout)
            time.sleep(self.faults.drain_teardown_seconds)
        if not self.state.engine_dead:
            self._engine().shutdown(f"{timeout}s", stop_engine=True)
            emit(texts.OUTPUT_HANDLER_FAILED, _ERROR, texts.output_handler_failed())
        emit(texts.SHUTDOWN_CLIENT_STOPPED, _INFO, "[shutdown] API server: engine client stopped")
        emit(
            texts.SHUTDOWN_SIGNAL_HTTP,
            _INFO,
            "[shutdown] API server: signalling HTTP server shutdown",
        )
        emit(
            texts.SHUTDOWN_FASTAPI,
            _INFO,
            "[shutdown] API server: shutting down FastAPI HTTP server",
        )
        uvicorn_shutdown_lines()
        self._engine().kill_all()
        return 0

    def _drain_requests(self, timeout: float) -> None:
        """--shutdown-timeout: refuse new requests, let running ones finish for up to
        `timeout` s. An engine killed meanwhile (SIGTERM to the whole group) cuts them."""
        self.state.draining = True
        deadline = time.monotonic() + timeout
        while self.state.in_flight and time.monotonic() < deadline:
            for event in self._drain():
                if event.kind == "exit":
                    self._on_engine_death()
            time.sleep(_POLL)

    def _interrupted_during_init(self) -> int:
        """SIGTERM/SIGINT before serving. vLLM's init handler raises
        ``KeyboardInterrupt("terminated")``; uncaught, Python dies by SIGINT (-2)."""
        self._engine().shutdown("0s", stop_engine=True)
        raw(texts.interrupted_during_init())
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        sys.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)
        return 130  # not reached: the default SIGINT action ends the process

    def _engine_failed_to_start(self, status: int) -> int:
        """The engine died while loading (killed from outside)."""
        failed = {"EngineCore": _exit_code(status)}
        self._engine().kill_all()
        raw(texts.engine_init_failed(failed))
        return 1

    def _static_lora_failed(self, problem: AdapterProblem) -> int:
        """A --lora-modules adapter fails to load after the model: 05-rank-too-big.log."""
        if problem.worker_error is not None:
            log_add_lora_failure(self.state, problem.worker_error)
        self._engine().shutdown("0s", stop_engine=True)
        raw(texts.static_lora_failed(problem.error.message))
        return 1

    def _write_state(self) -> None:
        target = os.environ.get("FAKE_VLLM_STATE_FILE")
        if not target:
            return
        engine = self.engine
        state = {
            "api_server_pid": os.getpid(),
            "engine_core_pid": engine.pid if engine else None,
            "worker_pid": engine.worker_pid if engine else None,
            "pgid": os.getpgid(0),
            "port": self.sock.getsockname()[1] if self.sock else None,
            "ready": self.ready,
        }
        tmp = Path(f"{target}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(target)  # atomic: a test polling the file never reads half of it


def _chatter(lines: int) -> None:
    """``chatty_lines``: lines in halves, straight to fd 2 (no buffer joins the halves)."""
    prefix = f"(APIServer pid={os.getpid()}) INFO 12-02 02:19:14 [chatty.py:1] chatty line"
    for number in range(lines):
        os.write(2, f"{prefix} {number:06d} first half, ".encode())
        time.sleep(0.001)
        os.write(2, b"second half\n")
