"""Scripted histories for the supervisor's loop (supervisord's and honcho's model): the real
`Supervisor` with a fake launcher, a scripted prober, a recording notifier and a clock that
reads an event loop whose time is virtual. A history of minutes runs in milliseconds, the
same every time.

The loop's time only moves when nothing can run: its selector, asked to wait, moves the time
to the next timer instead. Nothing to wait for and nothing scheduled is a stuck history: it
raises instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import random
import selectors
import signal
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from structlog.testing import capture_logs

from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.launch.topology import host_role
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.supervise.drain import LoadReader, RequestLoad
from niodoo_supervisor.supervise.incidents import ReloadResult
from niodoo_supervisor.supervise.loop import Supervisor
from niodoo_supervisor.supervise.probes import CheckResult, ProbeResult
from niodoo_supervisor.supervise.run import LaunchError
from niodoo_supervisor.supervise.states import State
from role_configs import topology_needs

T = TypeVar("T")

START = 1000.0  # the virtual clock's first reading (0 would read as "never")
EPOCH = 1_700_000_000.0  # wall time at START


_TICK = 1e-9


class _Now:
    value = START


class _FastForwardSelector(selectors.BaseSelector):
    """The loop's selector: real I/O is polled without waiting; a wait moves the time."""

    def __init__(self, now: _Now) -> None:
        self._real = selectors.DefaultSelector()
        self._now = now

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            # Running code takes time too. asyncio fires a timer up to a clock tick early; a
            # waiter that finds its deadline not quite reached waits again, and only time
            # moving on ends that.
            self._now.value += _TICK
            return ready
        if timeout is None:
            raise RuntimeError("stuck: nothing can run and nothing is scheduled")
        # At least one step of the float: a wait shorter than that would never end.
        self._now.value = max(self._now.value + timeout, math.nextafter(self._now.value, math.inf))
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual_now = _Now()
        super().__init__(_FastForwardSelector(self._virtual_now))

    def time(self) -> float:
        return self._virtual_now.value


def run_virtual(main: Coroutine[Any, Any, T], limit: float = 100_000.0) -> T:
    """Run `main` on a virtual-time loop; fail when it is not done within `limit` virtual s."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, limit))
    finally:
        loop.close()


class LoopClock:
    """The `Clock` of the virtual loop; its wall time reads `epoch` at START."""

    def __init__(self, epoch: float = EPOCH) -> None:
        self.epoch = epoch

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return self.epoch + asyncio.get_running_loop().time() - START


def after_start(seconds: float) -> Any:
    """`seconds` after the history started, as an equality that allows the clock's ticks."""
    return pytest.approx(START + seconds, abs=1e-6)


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Notified:
    at: float
    fields: tuple[str, ...]


class RecordingNotifier:
    dropped = 0

    def __init__(self) -> None:
        self.sent: list[Notified] = []

    def send(self, *fields: str) -> None:
        self.sent.append(Notified(now(), fields))

    def times(self, prefix: str) -> list[float]:
        return [n.at for n in self.sent if any(f.startswith(prefix) for f in n.fields)]


@dataclass
class Server:
    """What vLLM's HTTP API answers now: `health` None refuses the connection; `hang`
    accepts and never answers; `hang_models` answers /health but never /v1/models;
    `missing` are adapters /v1/models does not list."""

    health: int | None = None
    hang: bool = False
    missing: tuple[str, ...] = ()
    hang_models: bool = False

    @property
    def ready(self) -> bool:
        return self.health == 200 and not self.hang and not self.missing


def event(rule: str, action: Action, message: str = "", **details: Any) -> Event:
    text = message or rule
    return Event(rule, Severity.INFO, action, "", text, "APIServer", 7, None, (text,), details)


def phase(name: str, message: str = "", **details: Any) -> Event:
    """A phase event of the rule `name` (details as the rule's pattern would give them)."""
    return event(name, Action.PHASE, message or f"phase {name}", phase=name, **details)


class FakeRun:
    def __init__(self, sim: Sim, pid: int, on_event: Callable[[Event], None],
                 on_exit: Callable[[int, int], None]) -> None:  # fmt: skip
        self.sim = sim
        self.pid = pid
        self.started = now()
        self.last_output = self.started
        self.lines: list[str] = []
        self.on_event = on_event
        self.on_exit = on_exit
        self.dropped_bytes = 0
        self.serving = False
        self.exit_code: int | None = None
        self.stopped_at: float | None = None
        self.stop_grace: float | None = None  # the grace the supervisor gave its stop
        self.argv: tuple[str, ...] = ()
        self.in_pipe: list[tuple[str, tuple[Event, ...]]] = []  # written, read only by `drain`
        self.processes_recorded = 0
        self.adapters_served: list[str] | None = None  # as LiveAdapters last said

    # --- what the supervisor calls ------------------------------------------------------------

    def silent_for(self, at: float) -> float:
        return at - self.last_output

    def tail(self, count: int) -> list[str]:
        return self.lines[-count:] if count else []

    def last_line(self) -> str:
        return self.lines[-1] if self.lines else "no output"

    def mark_serving(self) -> None:
        self.serving = True

    def serve_adapters(self, adapters: Sequence[str]) -> None:
        self.adapters_served = list(adapters)

    def record_processes(self) -> None:
        self.processes_recorded += 1

    async def drain(self, timeout: float) -> None:
        await asyncio.sleep(0)
        while self.in_pipe:
            line, events = self.in_pipe.pop(0)
            self.say(line, *events)

    async def stop(self, grace: float) -> None:
        self.stopped_at, self.stop_grace = now(), grace
        self.sim.server = Server()
        await asyncio.sleep(self.sim.stop_takes)
        if self.exit_code is None:
            self.exit(-signal.SIGTERM)  # its exit still reaches the loop, after the stop

    # --- what a script does -------------------------------------------------------------------

    def say(self, line: str, *events: Event) -> None:
        self.lines.append(line)
        self.last_output = now()
        for each in events:
            self.on_event(each)

    def leave_in_pipe(self, line: str, *events: Event) -> None:
        """A line written just before the exit, read only when the pipe is drained."""
        self.in_pipe.append((line, events))

    def exit(self, code: int) -> None:
        self.exit_code = code
        self.sim.server = Server()
        self.on_exit(self.pid, code)


Script = Callable[[FakeRun], None]


def boots(load: float = 5.0, *, then: Script | None = None) -> Script:
    """A healthy start: progress every second, the HTTP server up after `load` s."""

    def script(run: FakeRun) -> None:
        sim = run.sim
        for second in range(1, int(load)):
            sim.after(second, functools.partial(run.say, f"loading {second}"))
        sim.after(load, lambda: sim.serve(run))
        if then is not None:
            sim.after(load, lambda: then(run))

    return script


class ScriptedProber:
    def __init__(self, sim: Sim, timeout: float) -> None:
        self.sim = sim
        self.timeout = timeout
        self.closed = False
        self.expected: list[str] | None = None  # adapters changed live, as last told

    async def check(self) -> CheckResult:
        self.sim.probes.append(now())
        server = self.sim.server
        if server.hang:
            await asyncio.sleep(self.timeout)
            return CheckResult(ProbeResult(False, None, self.timeout, "timed out", True), None)
        await asyncio.sleep(self.sim.probe_latency)
        latency = self.sim.probe_latency
        if server.health is None:
            return CheckResult(ProbeResult(False, None, latency, "connection refused"), None)
        if server.health != 200:
            return CheckResult(ProbeResult(False, server.health, latency, f"HTTP {server.health}"), None)  # fmt: skip
        health = ProbeResult(True, 200, latency)
        if server.hang_models:
            await asyncio.sleep(self.timeout)
            return CheckResult(health, ProbeResult(False, None, self.timeout, "timed out", True))
        if server.missing:
            reason = f"missing {', '.join(server.missing)}"
            return CheckResult(health, ProbeResult(False, 200, latency, reason), server.missing)
        return CheckResult(health, ProbeResult(True, 200, latency))

    async def aclose(self) -> None:
        self.closed = True

    def expect_adapters(self, names: Sequence[str]) -> None:
        self.expected = list(names)


SETTINGS: dict[str, Any] = {
    "startup_timeout": 600,
    "startup_stall_timeout": 120,
    "health": {"interval": 10, "startup_interval": 1, "timeout": 5, "failure_threshold": 3},
    "restart": {"initial_delay": 2, "factor": 2, "max_delay": 120, "jitter": 0,
                "reset_after": 300, "max_starts": 5, "window": 900},
    "stop": {"grace_period": 15},
    "log": {"crash_report_lines": 20},
}  # fmt: skip


def sim_plan(*argv: str) -> LaunchPlan:
    """A launch plan for the simulated launcher, which runs nothing: only `argv` is read."""
    return LaunchPlan(
        argv=argv,
        env={},
        logging_config_path=Path("logging.json"),
        logging_config=None,
        max_lora_rank=None,
        vllm_version=None,
        api_key=None,
        secrets=(),
    )


def sim_config(
    tmp: Path,
    *,
    port: int = 8000,
    server: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    windows: list[dict[str, Any]] | None = None,
    drain: dict[str, Any] | None = None,
    topology: dict[str, Any] | None = None,
    **supervisor: Any,
) -> Config:
    """`topology`: this host's part in one (with the launcher and sizes it needs)."""
    settings = {**SETTINGS, **supervisor, "state_dir": str(tmp / "state")}
    needs, engine = topology_needs(topology or {})
    document = {
        "server": {"python": "python3", "port": port, **needs, **(server or {})},
        "model": {"path": str(tmp / "model"), "served_name": "tiny"},
        "lora": {"enabled": True, "max_loras": 2, "max_lora_rank": 16, "verify": "off",
                 "adapters": [{"name": "a", "path": str(tmp / "a")},
                              {"name": "b", "path": str(tmp / "b")}], **(lora or {})},
        "supervisor": settings,
        "maintenance": {"windows": windows or []},
        **({"drain": drain} if drain else {}),
        **({"topology": topology, "engine": engine} if topology else {}),
    }  # fmt: skip
    path = tmp / f"sim-{len(list(tmp.glob('sim-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(document))
    config, problems = load_config(path, {})
    assert config is not None, [problem.format() for problem in problems]
    return config


@dataclass
class Sim:
    """One scripted history. `scripts` are used by successive launches (a `LaunchError`
    is raised instead where one stands)."""

    tmp: Path
    scripts: list[Script | LaunchError] = field(default_factory=list)
    config: Config | None = None
    server: Server = field(default_factory=Server)
    probe_latency: float = 0.005
    stop_takes: float = 0.5
    reload_gate: asyncio.Event | None = None
    reload_result: ReloadResult | None = None
    epoch: float = EPOCH  # the wall clock at START
    # What vLLM's /metrics answers while it drains, one reading per read (the last repeats).
    loads: list[RequestLoad | None] = field(default_factory=lambda: [None])
    read_takes: float = 0.0  # how long one read of the gauges takes
    # Each drain's reader: the port it reads, its reads (when, the SIGTERM sent before?), closed?
    readers: list[dict[str, Any]] = field(default_factory=list)
    runs: list[FakeRun] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    probers: list[ScriptedProber] = field(default_factory=list)
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)
    notifier: RecordingNotifier = field(default_factory=RecordingNotifier)
    gpu_source: Any = None  # NVML as `gpu_memory` asks it (None: not asked)
    _timers: list[tuple[float, Callable[[], None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = sim_config(self.tmp)
        # This host's role in the config's topology (one host unless it has one).
        plan = dataclasses.replace(sim_plan("python3"), role=host_role(self.config, {}))
        self.supervisor = Supervisor(
            self.config,
            plan,
            notifier=self.notifier,
            environ={},
            reloader=self._reload,
            prober_factory=self._prober,
            rng=random.Random(0),
            clock=LoopClock(self.epoch),
            launcher=self,
            load_reader=self._load_reader,
            gpu_source=self.gpu_source,
        )

    # --- the launcher -------------------------------------------------------------------------

    async def launch(
        self,
        config: Config,
        plan: LaunchPlan,
        *,
        on_event: Callable[[Event], None],
        on_exit: Callable[[int, int], None],
    ) -> FakeRun:
        script = self.scripts[len(self.runs)] if len(self.runs) < len(self.scripts) else None
        if isinstance(script, LaunchError):
            self.runs.append(FakeRun(self, 0, on_event, on_exit))  # counted, never started
            raise script
        run = FakeRun(self, 4000 + len(self.runs), on_event, on_exit)
        run.argv = plan.argv
        self.runs.append(run)
        if script is not None:
            script(run)
        return run

    def close(self) -> None:
        pass

    def _prober(self, config: Config, api_key: str | None) -> ScriptedProber:
        prober = ScriptedProber(self, config.supervisor.health.timeout)
        self.probers.append(prober)
        return prober

    @contextlib.asynccontextmanager
    async def _load_reader(self, config: Config) -> AsyncIterator[LoadReader]:
        reader: dict[str, Any] = {"port": config.port, "reads": [], "closed": False}
        self.readers.append(reader)

        async def read() -> RequestLoad | None:
            reader["reads"].append((now(), self.runs[-1].stopped_at is not None))
            # at once by default: a stop's timings stay those of its signals
            await asyncio.sleep(self.read_takes)
            return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

        try:
            yield read
        finally:
            reader["closed"] = True

    async def _reload(self) -> ReloadResult:
        if self.reload_gate is not None:
            await self.reload_gate.wait()
        assert self.reload_result is not None
        return self.reload_result

    # --- scripting ----------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Do `action` `when` seconds after the history starts."""
        self._timers.append((when, action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(delay, action)

    def serve(self, run: FakeRun, missing: tuple[str, ...] = ()) -> None:
        """vLLM's HTTP server is up: the log says so and /health answers."""
        self.server = Server(health=200, missing=missing)
        line = "Starting vLLM server on http://127.0.0.1:8000"
        run.say(line, phase("listening", line, address="http://127.0.0.1:8000"))

    def signal(self, signum: int) -> Callable[[], None]:
        return lambda: self.supervisor.dispatcher.signal(signum)

    def play(self, limit: float = 100_000.0, early: tuple[int, ...] = ()) -> int:
        """Run the history to the supervisor's exit; returns its exit code. `early`: signals
        that arrived before the loop's handlers were installed."""

        async def main() -> int:
            loop = asyncio.get_running_loop()
            for when, action in self._timers:
                loop.call_later(when, action)
            return await self.supervisor.run(lambda: early)

        with capture_logs() as logs:
            try:
                return run_virtual(main(), limit)
            finally:
                self.logs = logs

    # --- reading the history ------------------------------------------------------------------

    def transitions(self) -> list[MutableMapping[str, Any]]:
        return [record for record in self.logs if record["event"] == "state_changed"]

    def states(self) -> list[str]:
        return [record["new"] for record in self.transitions()]

    def edges(self) -> set[tuple[State, State]]:
        return {(State(r["old"]), State(r["new"])) for r in self.transitions()}

    def transition(self, new: str, nth: int = 0) -> MutableMapping[str, Any]:
        found = [record for record in self.transitions() if record["new"] == new]
        assert len(found) > nth, f"no {new} number {nth + 1}; states {self.states()}"
        return found[nth]

    def event(self, name: str) -> MutableMapping[str, Any] | None:
        return next((record for record in self.logs if record["event"] == name), None)
