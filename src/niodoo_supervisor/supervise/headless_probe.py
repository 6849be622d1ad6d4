"""The health of a host without vLLM's HTTP server (a `headless` rank of `mp` or `dp`, or a
Ray `ray-worker`): nothing on this host answers /health, so a check asks two other things.

- This host's part: vLLM's process (the session it leads) is alive and, for readiness, its
  log reached the role's ready line: `dp` engines log `init engine (profile, create kv cache,
  warmup model) took` (`engine_ready`); `mp` workers have no engine and log no such line, so
  their last line common to every build counts, `Loading weights took` (`weights_loaded`).
  These lines are trusted: the phase rules match only at the start of vLLM's message
  (`logs.trust`), and the phase is read only while the start lasts, when no request can
  reach this host yet (the head serves only once every node's workers are up). On a
  `ray-worker` host the part is the Ray node (the companion): alive is all it can say.
- The head (`topology.watch_head`): vLLM's peers do not notice each other's death (a head
  answers /health 200 with a dead headless engine, a headless worker outlives its head for
  good), so this host watches the head itself: `mp` a TCP connect to the master port (the
  head's torch store listens there while the head lives), `dp` the head's `GET /health` on
  `server.port` (its handshake port listens only while it starts), `ray` a TCP connect to
  the Ray head's port. Unreachable for `failure_threshold` checks in a row is unhealthy, and
  the watcher's restart path restarts this host's part. `head_unreachable` / `head_reachable`
  are logged when the answer changes.

A check returns a `CheckResult` like the HTTP prober's: `health` is this host's part,
`models` the head (always ok when not watched). Neither has an HTTP status: nothing here
serves clients, so nothing here marks vLLM as serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.topology import DEFAULT_MASTER_PORT, HostRole, Role
from niodoo_supervisor.supervise.probes import CheckResult, ProbeResult, vllm_client
from niodoo_supervisor.supervise.process_tree import session_members

__all__ = [
    "READY_PHASES",
    "HeadTarget",
    "HeadlessProber",
    "RoleCheck",
    "RunView",
    "head_target",
    "ready_role",
    "role_sentence",
]

log = structlog.get_logger("niodoo_supervisor")

# The phase (progress.py's phase names) whose line says this host's part is up, per backend.
READY_PHASES = {"dp": "engine_ready", "mp": "weights_loaded"}


@dataclass(frozen=True)
class RunView:
    """What the prober reads of the run it watches: how many processes of its session are
    alive (0: none; `session_size`) and the start-up phases its log has reached."""

    processes: Callable[[], int]
    phases: Callable[[], frozenset[str]]


def session_size(pid: int | None) -> int:
    """The live processes of the session vLLM (or the companion) leads (`pid` None: 0)."""
    return 0 if pid is None else len(session_members(pid))


# Whether the head answers: None when it does, else why not (a test seam).
Reach = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class HeadTarget:
    """Where the head is watched: a TCP port, or an HTTP `/health` (`http`)."""

    host: str
    port: int
    http: bool

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def describe(self) -> str:
        return f"http://{self.address}/health" if self.http else self.address


def head_target(config: Config, role: HostRole) -> HeadTarget | None:
    """The head's port this host watches (None: not watched, or nothing to watch)."""
    topology = config.topology
    if not topology.watch_head or role.head_address is None or role.has_api_server:
        return None
    if role.backend == "dp":
        return HeadTarget(role.head_address, config.port, http=True)
    if role.backend == "ray":
        return HeadTarget(role.head_address, topology.ray_port, http=False)
    return HeadTarget(role.head_address, topology.master_port or DEFAULT_MASTER_PORT, http=False)


def ready_role(config: Config, role: HostRole) -> str | None:
    """`role_sentence` for a host without an API server, None for one that serves."""
    return None if role.has_api_server else role_sentence(config, role)


def role_sentence(config: Config, role: HostRole) -> str:
    """What READY=1 and the `ready` record say instead of an HTTP address:
    `headless rank 1 of 2 (dp), head 10.13.0.1 reachable`."""
    what = f"{role.role.value} rank {role.rank} of {role.nodes} ({role.backend})"
    if head_target(config, role) is None:
        return f"{what}, head not watched"
    return f"{what}, head {role.head_address} reachable"


@dataclass(frozen=True)
class RoleCheck(CheckResult):
    """A check of a host without an API server: its reasons name what was checked."""

    @property
    def reason(self) -> str:
        if not self.health.ok:
            return self.health.reason
        if self.models is not None and not self.models.ok:
            return self.models.reason
        return "ok"


class HeadlessProber:
    """The prober of a host whose role has no API server (`prober_for` picks it)."""

    def __init__(
        self,
        role: HostRole,
        run: RunView,
        head: HeadTarget | None,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        reach: Reach | None = None,
    ) -> None:
        self.role = role
        self.run = run
        self.head = head
        self.timeout = timeout
        self.client = (
            vllm_client(f"http://{head.address}", None, timeout, transport)
            if head is not None and head.http
            else None
        )
        self.head_was_reachable: bool | None = None  # the last answer, for the change records
        self.reach = reach or (self._http_problem if self.client is not None else self._tcp_problem)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def expect_adapters(self, names: Sequence[str]) -> None:
        """Adapters live on the head's API server; nothing to check here."""

    async def check(self) -> CheckResult:
        part = self._part()
        head = await self._head() if part.ok else None
        return RoleCheck(part, head)

    def _part(self) -> ProbeResult:
        processes = self.run.processes()
        if processes == 0:
            what = "the Ray node" if self.role.role is Role.RAY_WORKER else "vLLM"
            return ProbeResult(False, None, 0.0, f"{what} has no process left")
        phase = READY_PHASES.get(self.role.backend)
        if phase is not None and phase not in self.run.phases():
            return ProbeResult(
                False, None, 0.0, f"vLLM's log has not reached {phase} yet ({processes} processes)"
            )
        return ProbeResult(True, None, 0.0)

    async def _head(self) -> ProbeResult:
        if self.head is None:
            return ProbeResult(True, None, 0.0, "head not watched")
        started = time.monotonic()
        problem = await self.reach()
        latency = time.monotonic() - started
        reachable = problem is None
        if reachable != self.head_was_reachable:
            if reachable:
                log.info("head_reachable", head=self.head.describe)
            else:
                log.warning("head_unreachable", head=self.head.describe, reason=problem)
            self.head_was_reachable = reachable
        if problem is None:
            return ProbeResult(True, None, latency)
        timed_out = problem == "timed out"
        return ProbeResult(
            False, None, latency, f"head {self.head.describe}: {problem}", timed_out=timed_out
        )

    async def _tcp_problem(self) -> str | None:
        assert self.head is not None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.head.host, self.head.port), self.timeout
            )
        except asyncio.TimeoutError:  # not builtin TimeoutError before Python 3.11
            return "timed out"
        except OSError as exc:
            return _os_reason(exc)
        writer.close()
        with contextlib.suppress(OSError):  # a reset while closing: the head answered anyway
            await writer.wait_closed()
        return None

    async def _http_problem(self) -> str | None:
        assert self.client is not None
        try:
            response = await self.client.get("/health")
        except httpx.TimeoutException:
            return "timed out"
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                return _os_reason(cause)
            return (str(exc) or type(exc).__name__).splitlines()[0]
        if response.status_code != 200:
            return f"/health answered HTTP {response.status_code}"
        return None


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or type(exc).__name__
