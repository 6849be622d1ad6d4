"""The API server's side of its engine: vLLM's ``MPClient`` and process manager.

``spawn_engine`` forks the EngineCore; a monitor thread reads the engine's pipe and then
reaps it, turning both into ``EngineEvent``s for the main loop. Stopping the engine logs
the ``[shutdown] MPClient`` / ``Process manager`` lines of the captured logs and escalates
from SIGTERM to SIGKILL as vLLM does.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from vllm._fake import texts
from vllm._fake.engine import EngineSpec, flush_output, run_engine_core, signal_pid
from vllm._fake.logs import emit

__all__ = ["EngineClient", "EngineEvent", "pid_alive", "spawn_engine"]

_INFO, _WARNING = logging.INFO, logging.WARNING
_ENGINE_GRACE = 0.2  # vLLM force-kills its engine almost at once in abort mode


@dataclass(frozen=True)
class EngineEvent:
    """``worker`` (value: its pid), ``ready``, or ``exit`` (value: the wait status)."""

    kind: str
    value: int = 0


def pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (an orphan's reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat[stat.rindex(")") + 2] not in "ZX"


class EngineClient:
    """Pids of the engine and its worker, their events, and how to stop them."""

    def __init__(self, pid: int, report_fd: int, events: queue.Queue[EngineEvent]) -> None:
        self.pid = pid
        self.worker_pid: int | None = None
        self.exited = threading.Event()
        self._report_fd = report_fd
        self._events = events
        threading.Thread(target=self._monitor, name="engine-monitor", daemon=True).start()

    def _monitor(self) -> None:
        with os.fdopen(self._report_fd, "rb") as pipe:
            for line in pipe:
                kind, _, value = line.decode().strip().partition(" ")
                if kind == "worker":
                    self.worker_pid = int(value)
                self._events.put(EngineEvent(kind, int(value or 0)))
        _, status = os.waitpid(self.pid, 0)
        self.exited.set()
        self._events.put(EngineEvent("exit", status))

    def shutdown(self, timeout_label: str, *, stop_engine: bool) -> None:
        """The MPClient shutdown lines; with ``stop_engine``, also stop the processes."""
        emit(texts.MP_START, _INFO, "[shutdown] MPClient: start timeout=%s", timeout_label)
        emit(texts.MP_STOPPING, _INFO, "[shutdown] MPClient: stopping engine manager")
        if stop_engine:
            self._stop_processes()
        emit(texts.MP_STOPPED, _INFO, "[shutdown] MPClient: engine manager stopped")
        emit(texts.MP_CLEANUP, _INFO, "[shutdown] MPClient: cleaning up background resources")
        emit(texts.MP_COMPLETE, _INFO, "[shutdown] MPClient: complete")

    def _stop_processes(self) -> None:
        """vLLM's process manager: SIGTERM the engine, force-kill what is left."""
        if not self.exited.is_set():
            emit(
                texts.PM_SIGTERM,
                _INFO,
                "[shutdown] Process manager: send sigterm to process EngineCore",
            )
            signal_pid(self.pid, signal.SIGTERM)
            if not self.exited.wait(_ENGINE_GRACE):
                emit(
                    texts.PM_FORCE_COUNT,
                    _WARNING,
                    "[shutdown] Process manager: force killing remaining processes count=%d",
                    1,
                )
                emit(
                    texts.PM_FORCE_ONE,
                    _WARNING,
                    "[shutdown] Process manager: force killing remaining process EngineCore pid %d",
                    self.pid,
                )
                signal_pid(self.pid, signal.SIGKILL)
                self.exited.wait(1.0)
        worker = self.worker_pid
        if worker and pid_alive(worker):
            emit(
                texts.FORCE_SUB_PROCESS,
                _WARNING,
                "[shutdown] force killing sub process %s pid %d",
                "VLLM::Worker",
                worker,
            )
            signal_pid(worker, signal.SIGKILL)

    def inject_fatal_error(self) -> None:
        """The engine_death_after fault: the engine dies as if a step raised."""
        signal_pid(self.pid, signal.SIGUSR1)

    def terminate(self, wait: float) -> None:
        """SIGTERM the engine without a word (multiprocessing's exit hook in a crash)."""
        signal_pid(self.pid, signal.SIGTERM)
        self.exited.wait(wait)

    def kill_all(self) -> None:
        """Make sure nothing of the engine outlives the API server, silently."""
        for pid in (self.pid, self.worker_pid):
            if pid and pid_alive(pid):
                signal_pid(pid, signal.SIGKILL)
        self.exited.wait(1.0)


def spawn_engine(spec: EngineSpec, events: queue.Queue[EngineEvent]) -> EngineClient:
    """Fork the EngineCore (which forks its Worker); call before starting any thread."""
    read_fd, write_fd = os.pipe()
    flush_output()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        run_engine_core(spec, write_fd)
    os.close(write_fd)
    return EngineClient(pid, read_fd, events)
