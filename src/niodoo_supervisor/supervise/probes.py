"""Probes of vLLM's HTTP API. They return values, never raise, to the state machine.

Ready and alive mean the same two things: `GET /health` answers 200, and `GET /v1/models`
lists the served model and every configured adapter with `parent` = the served name. Neither
alone is enough: `/v1/models` keeps answering 200 while the engine is dead (only `/health`
turns 503), and `/health` says nothing about adapters. A `dp` head's liveness checks also ask
each data-parallel engine (engine_probe.py): its `/health` stays 200 when a remote one dies.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.render import REDACTED
from niodoo_supervisor.launch.topology import SINGLE_HOST, HostRole

if TYPE_CHECKING:
    from niodoo_supervisor.supervise.engine_probe import EngineProbe
    from niodoo_supervisor.supervise.headless_probe import HeadlessProber, RunView

__all__ = [
    "CheckResult",
    "HttpProber",
    "ProbeResult",
    "models_problems",
    "prober_for",
    "vllm_client",
    "vllm_url",
]

_BEARER = re.compile(r"Bearer\s+\S+", re.IGNORECASE)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None  # HTTP status; None when no answer came
    latency: float
    reason: str = ""
    timed_out: bool = False  # asked, and no answer within the probe timeout


@dataclass(frozen=True)
class CheckResult:
    health: ProbeResult
    models: ProbeResult | None  # not asked when /health failed
    missing: tuple[str, ...] = field(default=())
    effect: ProbeResult | None = None  # the adapters' effect probe (lora.verify), once listed
    engines: ProbeResult | None = None  # a dp head's engines, each asked (engine_probe.py)

    @property
    def ok(self) -> bool:
        listed = self.health.ok and self.models is not None and self.models.ok
        extra = (self.effect, self.engines)
        return listed and all(probe is None or probe.ok for probe in extra)

    @property
    def reason(self) -> str:
        if not self.health.ok:
            return f"/health: {self.health.reason}"
        if self.models is None or not self.models.ok:
            return f"/v1/models: {self.models.reason if self.models else 'not asked'}"
        if self.effect is not None and not self.effect.ok:
            return self.effect.reason
        if self.engines is not None and not self.engines.ok:
            return self.engines.reason
        return "ok"

    @property
    def timed_out(self) -> bool:
        return (
            self.health.timed_out
            or (self.models is not None and self.models.timed_out)
            or (self.effect is not None and self.effect.timed_out)
            or (self.engines is not None and self.engines.timed_out)
        )


def models_problems(payload: object, served: str, adapters: Sequence[str]) -> tuple[list[str], str]:
    """Names missing from a /v1/models payload, and why (empty when all are there)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return [served, *adapters], "answer is not a model list"
    listed = {
        str(item.get("id")): item.get("parent")
        for item in payload["data"]
        if isinstance(item, dict)
    }
    missing = [name for name in (served, *adapters) if name not in listed]
    wrong_parent = [name for name in adapters if name in listed and listed[name] != served]
    reasons = []
    if missing:
        reasons.append(f"missing {', '.join(missing)}")
    if wrong_parent:
        reasons.append(f"adapter(s) {', '.join(wrong_parent)} not parented to {served}")
    return missing + wrong_parent, "; ".join(reasons)


class HttpProber:
    """Probes one vLLM. `transport` is a test seam (httpx.MockTransport)."""

    def __init__(
        self,
        base_url: str,
        *,
        served: str,
        adapters: Sequence[str],
        api_key: str | None,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secrets = (api_key,) if api_key else ()
        self.served = served
        self.adapters = tuple(adapters)
        self.client = vllm_client(base_url, api_key, timeout, transport)
        # A dp head asks each engine too, once it has passed a check (engine_probe.py).
        self.engines: EngineProbe | None = None
        self.engines_armed = False

    async def aclose(self) -> None:
        await self.client.aclose()

    def expect_adapters(self, names: Sequence[str]) -> None:
        """The adapters vLLM serves now (changed live): checked from the next probe on."""
        self.adapters = tuple(names)

    async def _get(self, path: str) -> tuple[ProbeResult, httpx.Response | None]:
        started = time.monotonic()
        try:
            response = await self.client.get(path)
        except httpx.TimeoutException:
            return ProbeResult(
                False, None, time.monotonic() - started, "timed out", timed_out=True
            ), None
        except httpx.HTTPError as exc:
            return ProbeResult(
                False, None, time.monotonic() - started, _error_reason(exc, self.secrets)
            ), None
        latency = time.monotonic() - started
        if response.status_code != 200:
            return ProbeResult(
                False, response.status_code, latency, f"HTTP {response.status_code}"
            ), response
        return ProbeResult(True, 200, latency), response

    async def check(self) -> CheckResult:
        health, _ = await self._get("/health")
        if not health.ok:
            return CheckResult(health, None)
        models, response = await self._get("/v1/models")
        if not models.ok or response is None:
            return CheckResult(health, models)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        missing, reason = models_problems(payload, self.served, self.adapters)
        if missing:
            models = ProbeResult(False, models.status, models.latency, reason)
            return CheckResult(health, models, tuple(missing))
        if self.engines is None or not self.engines_armed:
            self.engines_armed = True  # the next check asks the engines
            return CheckResult(health, models)
        latency, why, timed_out = await self.engines.check()
        engines = ProbeResult(not why, 200 if not why else None, latency, why, timed_out)
        return CheckResult(health, models, engines=engines)


def _error_reason(exc: httpx.HTTPError, secrets: tuple[str, ...]) -> str:
    """Why a probe got no answer, for the journal, status.json and systemd's STATUS=, all
    readable by every local user. The text of a protocol error quotes the request's headers
    (h11: "Illegal header value b'Bearer <key>'"), so it is never used; other texts are
    searched for the secrets as a second line of defence."""
    if isinstance(exc, httpx.LocalProtocolError):
        return "the request could not be sent: a header value is invalid (check the API key)"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "vLLM's answer broke the HTTP protocol"
    text = _connection_reason(exc)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _BEARER.sub(f"Bearer {REDACTED}", text)


def _connection_reason(exc: httpx.HTTPError) -> str:
    text = (str(exc) or type(exc).__name__).splitlines()[0]
    if isinstance(exc, httpx.ConnectError):
        # httpx words a refusal "All connection attempts failed"; the OS error lies beneath.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
                return "connection refused"
            cause = cause.__cause__ or cause.__context__
        return f"cannot connect: {text}"
    return text


def vllm_client(
    base_url: str,
    api_key: str | None,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client of vLLM's HTTP API: the API key as a bearer token, and no proxies from the
    environment (vLLM is on this host)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=timeout, transport=transport, trust_env=False
    )


def vllm_url(config: Config) -> str:
    """Where the vLLM a config describes answers (a wildcard listen address on loopback)."""
    host = config.probe_host
    url_host = f"[{host}]" if ":" in host else host
    return f"http://{url_host}:{config.port}"


def prober_for(
    config: Config,
    api_key: str | None,
    *,
    role: HostRole = SINGLE_HOST,
    run: RunView | None = None,
) -> HttpProber | HeadlessProber:
    """The prober of the vLLM a config describes; a host whose `role` has no API server
    (headless, ray-worker) is probed through its `run` and the head instead."""
    if not role.has_api_server and run is not None:
        # Imported here: headless_probe builds on this module's results.
        from niodoo_supervisor.supervise.headless_probe import HeadlessProber, head_target

        timeout = config.supervisor.health.timeout
        return HeadlessProber(role, run, head_target(config, role), timeout=timeout)
    prober = HttpProber(
        vllm_url(config),
        served=config.served_name,
        adapters=[adapter.name for adapter in config.adapters],
        api_key=api_key,
        timeout=config.supervisor.health.timeout,
    )
    # Imported here: engine_probe reads answers as adapter_api does, which builds on this module.
    from niodoo_supervisor.supervise.engine_probe import engines_of

    prober.engines = engines_of(config, role, prober.client, prober.secrets)
    return prober
