"""Helpers shared by the fault-injection and end-to-end tiers: a real systemd notify socket,
the supervisor as a real subprocess, and deadline-based waiting."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Notification:
    at: float
    fields: dict[str, str]


class NotifySocket:
    """A bound AF_UNIX datagram socket playing systemd's part: records every notification."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[Notification] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(Notification(time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def first(self, key: str, value: str | None = None) -> Notification | None:
        for message in self.snapshot():
            if key in message.fields and (value is None or message.fields[key] == value):
                return message
        return None

    def count(self, key: str) -> int:
        return sum(key in message.fields for message in self.snapshot())

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.snapshot() if "STATUS" in m.fields]


@dataclass
class SupervisorRun:
    """`niodoo-supervisor run` as a real process, its stdout/stderr going to files."""

    config: Path
    state_dir: Path
    notify: NotifySocket
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    started: float = field(default_factory=time.monotonic)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def events(self) -> list[dict[str, str]]:
        """The supervisor's structured events (logfmt on stderr, each line led by its journal
        priority `<N>` when run as under the journal) as dicts; the priority is `priority`."""
        return [parse_record(line) for line in self.stderr().splitlines() if line.strip()]

    def event(self, name: str, **match: str) -> dict[str, str] | None:
        for record in self.events():
            if record.get("event") == name and all(record.get(k) == v for k, v in match.items()):
                return record
        return None

    def states(self) -> list[str]:
        return [record["new"] for record in self.events() if record.get("event") == "state_changed"]

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def wait_state(self, state: str, timeout: float) -> None:
        """Until the records show `state`, and status.json too (the supervisor writes it just
        after the record: a test reading it next must not find the file of the state before),
        unless the supervisor has moved on since."""
        wait_for(
            lambda: state in self.states(), timeout, f"state {state}; states so far {self.states()}"
        )
        wait_for(
            lambda: self.status().get("state") == state or self.states()[-1] != state,
            timeout,
            f"status.json to say {state}",
        )

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor still running after {timeout:g}s; states {self.states()}"
            ) from None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def cli(self, verb: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`niodoo-supervisor VERB` against this supervisor (its control socket, found through
        the state folder), as an operator would type it."""
        command = [sys.executable, "-m", "niodoo_supervisor", verb, "--state-dir", str(self.state_dir), *args]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def metrics(self) -> dict[str, float]:
        """The daemon's Prometheus metrics over its control socket, as `name{label="v"}` (or
        `name`) -> value."""
        transport = httpx.HTTPTransport(uds=str(self.state_dir / "control.sock"))
        with httpx.Client(transport=transport, timeout=10) as client:
            answer = client.get("http://niodoo-supervisor/metrics")
        answer.raise_for_status()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


def start_supervisor(
    config: Path,
    state_dir: Path,
    notify: NotifySocket,
    tmp: Path,
    *,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    journal: bool = True,
    wrap: Sequence[str] = (),
) -> SupervisorRun:
    """With `journal`, the supervisor's stderr file is named in JOURNAL_STREAM as systemd names
    the journal's stream: records come as logfmt with every field and a `<N>` priority, as a
    service writes them (`supervisor.log.format: auto`), and vLLM's lines are echoed. `wrap`
    goes before the command (`ip netns exec NS`: a wrapper that execs it, keeping the pid)."""
    env = dict(os.environ)
    env["NOTIFY_SOCKET"] = str(notify.path)
    env.pop("JOURNAL_STREAM", None)
    stdout_path, stderr_path = tmp / "supervisor.out", tmp / "supervisor.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        if journal:
            stat = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        env.update(extra_env or {})
        process = subprocess.Popen(
            [
                *wrap,
                sys.executable,
                "-m",
                "niodoo_supervisor",
                "run",
                "-c",
                str(config),
                *extra_args,
            ],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return SupervisorRun(config, state_dir, notify, process, stdout_path, stderr_path)


def stop_supervisor(run: SupervisorRun) -> None:
    """Test cleanup: end the supervisor and anything of vLLM's it left, whatever happened."""
    if run.process.poll() is None:
        run.process.send_signal(signal.SIGTERM)
        try:
            run.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
    for proc in sessions_descended_from(run):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc, signal.SIGKILL)


def sessions_descended_from(run: SupervisorRun) -> list[int]:
    """Pids of processes in sessions led by any vLLM the supervisor started (from its log)."""
    leaders = set(launched_pids(run))
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) in leaders and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return found


def _launches(run: SupervisorRun) -> list[dict[str, str]]:
    """The STARTING transitions, each naming the vLLM it launched in its `vllm_pid` field."""
    return [
        record
        for record in run.events()
        if record.get("event") == "state_changed" and record.get("new") == "STARTING"
    ]


def launched_pids(run: SupervisorRun) -> list[int]:
    return [int(record["vllm_pid"]) for record in _launches(run)]


def parse_record(line: str) -> dict[str, str]:
    """One logfmt record, its journal priority prefix (`<4>`) given as `priority`."""
    match = re.match(r"<([0-7])>", line)
    if match is None:
        return _parse_logfmt(line)
    return {"priority": match[1], **_parse_logfmt(line[match.end() :])}


def _parse_logfmt(line: str) -> dict[str, str]:
    result: dict[str, str] = {}
    index, length = 0, len(line)
    while index < length:
        while index < length and line[index] == " ":
            index += 1
        key_end = line.find("=", index)
        if key_end < 0:
            break
        key = line[index:key_end]
        index = key_end + 1
        if index < length and line[index] == '"':
            index += 1
            value_chars = []
            while index < length and line[index] != '"':
                if line[index] == "\\" and index + 1 < length:
                    index += 1
                    value_chars.append({"n": "\n", "t": "\t"}.get(line[index], line[index]))
                else:
                    value_chars.append(line[index])
                index += 1
            index += 1
            result[key] = "".join(value_chars)
        else:
            end = line.find(" ", index)
            end = length if end < 0 else end
            result[key] = line[index:end]
            index = end
    return result


@contextlib.contextmanager
def notify_socket(tmp: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()
