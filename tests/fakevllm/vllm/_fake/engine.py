"""The ``VLLM::EngineCore`` and ``VLLM::Worker`` child processes.

vLLM 0.32 forks its engine (default ``VLLM_WORKER_MULTIPROC_METHOD=fork``) after binding
the port, so the children share the API server's process group and inherit its socket;
the fake forks too, before the API server starts any thread. The engine reports to the
API server over a pipe (``worker <pid>``, ``ready``); the pipe's end-of-file plus
``waitpid`` is how the API server learns the engine died, however it died.

Children never run Python signal handlers: they block the signals they care about and
take them with ``sigtimedwait`` in their loop, so all work happens in that loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from vllm import __version__
from vllm._fake import texts
from vllm._fake.logs import emit, raw, set_process_name

__all__ = ["EngineSpec", "flush_output", "run_engine_core", "set_process_title", "signal_pid"]

_INFO, _ERROR = logging.INFO, logging.ERROR
_PROGRESS_INTERVAL = 0.2
_WORKER_GRACE = 0.3
FATAL_REASON = "fake fatal error injected by FAKE_VLLM_FAULTS=engine_death_after"


@dataclass(frozen=True)
class EngineSpec:
    model: str
    served_name: str
    max_model_len: int
    dtype: str
    load_seconds: float
    shutdown_timeout: int
    stubborn: bool


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def set_process_title(title: str) -> None:
    """What ``setproctitle`` does on Linux, with the standard library only.

    ``comm`` (``ps -o comm``, 15 chars) via prctl and /proc, and the argv area (``ps``
    args, ``/proc/PID/cmdline``) via /proc/self/mem, so ``psutil.Process.name()``, which
    extends a 15-char comm from the cmdline, reports the full ``VLLM::EngineCore``.
    """
    name = title.encode()[:15]
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # 15 = PR_SET_NAME
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_bytes(name)
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # stat fields 48 and 49
        size = arg_end - arg_start
        data = title.encode()[: size - 1] + b"\0"
        # A non-NUL last byte tells the kernel the title was rewritten, so cmdline stops
        # at the first NUL instead of listing empty arguments.
        data += b" " * (size - len(data))
        with Path("/proc/self/mem").open("r+b", buffering=0) as mem:
            mem.seek(arg_start)
            mem.write(data)


def flush_output() -> None:
    # Buffered output would be written twice, once by each side of a fork.
    sys.stdout.flush()
    sys.stderr.flush()


def _take_signals(stubborn: bool, extra: set[signal.Signals]) -> set[signal.Signals]:
    """Block (to take with sigtimedwait) or ignore the stop signals; returns the wait set."""
    stops = {signal.SIGTERM, signal.SIGINT}
    for sig in stops:
        signal.signal(sig, signal.SIG_IGN if stubborn else signal.SIG_DFL)
    wanted = set(extra) if stubborn else stops | extra
    # SIGUSR2 is never sent: it keeps the set non-empty so a wait is also a sleep.
    wanted.add(signal.SIGUSR2)
    signal.pthread_sigmask(signal.SIG_SETMASK, wanted)
    return wanted


def _reap(pid: int) -> bool:
    """True once ``pid`` (a child) has exited."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _worker_main(stubborn: bool, engine_pid: int) -> int:
    set_process_name("Worker")
    set_process_title("VLLM::Worker")
    wanted = _take_signals(stubborn, set())
    while True:
        info = signal.sigtimedwait(wanted, 0.1)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            return 0
        if os.getppid() != engine_pid:
            emit(
                texts.WORKER_PARENT_EXIT, _INFO, "Parent process exited, terminating worker queues"
            )
            return 0


class _EngineCore:
    """The engine child: announce itself, simulate the load, then idle until told to stop."""

    def __init__(self, spec: EngineSpec, report_fd: int) -> None:
        self.spec = spec
        self.report_fd = report_fd
        self.worker_pid = 0
        self.wanted: set[signal.Signals] = set()

    def run(self) -> int:
        set_process_name("EngineCore")
        set_process_title("VLLM::EngineCore")
        self.wanted = _take_signals(self.spec.stubborn, {signal.SIGUSR1})
        spec = self.spec
        emit(
            texts.ENGINE_INIT,
            _INFO,
            "Initializing a V1 LLM engine (v%s) with config: model=%r, tokenizer=%r, dtype=%s, "
            "max_seq_len=%d, device_config=cpu, served_model_name=%s",
            __version__,
            spec.model,
            spec.model,
            spec.dtype,
            spec.max_model_len,
            spec.served_name,
        )
        self.worker_pid = self._spawn_worker()
        os.write(self.report_fd, f"worker {self.worker_pid}\n".encode())
        self._load()
        os.write(self.report_fd, b"ready\n")
        while True:
            self._wait(0.5)

    def _spawn_worker(self) -> int:
        flush_output()
        engine_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Only the engine may hold the report pipe: its EOF means "engine gone".
                os.close(self.report_fd)
                code = _worker_main(self.spec.stubborn, engine_pid)
            except Exception:
                traceback.print_exc()
            finally:
                flush_output()
                os._exit(code)
        return pid

    def _load(self) -> None:
        spec = self.spec
        worker = ("Worker", self.worker_pid)
        started = time.monotonic()
        emit(texts.LOAD_START, _INFO, "Starting to load model %s...", spec.model, proc=worker)
        steps = max(1, math.ceil(spec.load_seconds / _PROGRESS_INTERVAL))
        for done in range(steps + 1):
            if done:
                self._wait(spec.load_seconds / steps)
            elapsed = time.monotonic() - started
            rate = f"{done / elapsed:.2f}" if done and elapsed > 0 else "?"
            raw(
                f"\rLoading safetensors checkpoint shards: {100 * done // steps:3d}% Completed "
                f"| {done}/{steps} [{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}"
                f"<{'00:00' if done else '?'}, {rate}it/s]"
            )
        raw("")
        took = time.monotonic() - started
        emit(texts.WEIGHTS_TOOK, _INFO, "Loading weights took %.2f seconds", took, proc=worker)
        emit(
            texts.KV_CACHE,
            _INFO,
            "CPU KV cache size: 2,097,152 tokens, Maximum concurrency for %d tokens per "
            "request: %.2fx",
            spec.max_model_len,
            2_097_152 / max(1, spec.max_model_len),
        )
        emit(
            texts.INIT_ENGINE_TOOK,
            _INFO,
            "init engine (profile, create kv cache, warmup model) took %.2f s",
            time.monotonic() - started,
        )

    def _wait(self, timeout: float) -> None:
        info = signal.sigtimedwait(self.wanted, timeout)
        if self.worker_pid and _reap(self.worker_pid):
            self.worker_pid = 0
        if info is None or info.si_signo == signal.SIGUSR2:
            return
        if info.si_signo == signal.SIGUSR1:
            # The engine_death_after fault: die like an engine whose step raised.
            emit(texts.EC_FATAL, _ERROR, texts.engine_fatal_error(FATAL_REASON))
            flush_output()
            os._exit(1)
        self._shutdown(signal.Signals(info.si_signo).name)

    def _shutdown(self, signal_name: str) -> None:
        timeout = self.spec.shutdown_timeout
        mode = "abort" if timeout == 0 else "drain"
        emit(
            texts.EC_SIGNAL, _INFO, "[shutdown] EngineCore: trigger received signal=%s", signal_name
        )
        emit(
            texts.EC_START, _INFO, "[shutdown] EngineCore: start mode=%s timeout=%ss", mode, timeout
        )
        emit(
            texts.EC_TEARDOWN,
            _INFO,
            "[shutdown] EngineCore: request processing complete; starting resource teardown",
        )
        emit(texts.EC_EXIT_LOOP, _INFO, "[shutdown] EngineCore: exiting busy loop")
        if self.worker_pid:
            emit(texts.EXECUTOR_WAIT, _INFO, "[shutdown] Executor: waiting for worker exit count=1")
            signal_pid(self.worker_pid, signal.SIGTERM)
            deadline = time.monotonic() + _WORKER_GRACE
            while not _reap(self.worker_pid):
                if time.monotonic() > deadline:
                    signal_pid(self.worker_pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(self.worker_pid, 0)
                    break
                time.sleep(0.01)
        flush_output()
        os._exit(0)


def run_engine_core(spec: EngineSpec, report_fd: int) -> NoReturn:
    """Body of the forked EngineCore process; never returns."""
    code = 1
    try:
        code = _EngineCore(spec, report_fd).run()
    except Exception:
        traceback.print_exc()
    finally:
        flush_output()
        os._exit(code)
