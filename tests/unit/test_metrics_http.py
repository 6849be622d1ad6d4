"""`supervisor.metrics.listen`: the loopback-only address and the /metrics endpoint on it."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from structlog.testing import capture_logs

from metrics_scrape import loopback_port
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.control.metrics_http import metrics_endpoint

PORTS = range(18540, 18560)  # this helper's test ports


def _problems(tmp_path: Path, listen: object) -> list[str]:
    document = {
        "server": {"python": "python3"},
        "model": {"path": str(tmp_path), "served_name": "tiny"},
        "supervisor": {"metrics": {"listen": listen}, "state_dir": str(tmp_path)},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    _, problems = load_config(path, {})
    return [problem.format() for problem in problems]


@pytest.mark.parametrize("listen", ["127.0.0.1:9400", "[::1]:9400", "127.0.0.2:1"])
def test_a_loopback_address_is_taken(tmp_path: Path, listen: str) -> None:
    assert _problems(tmp_path, listen) == []


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("0.0.0.0:9400", "0.0.0.0 is not a loopback address"),
        ("10.1.2.3:9400", "10.1.2.3 is not a loopback address"),
        ("localhost:9400", "'localhost' is not an IP address"),
        ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),
        (9400, "must be"),
    ],
)
def test_any_other_address_is_refused_naming_the_key(
    tmp_path: Path, listen: object, why: str
) -> None:
    (problem,) = _problems(tmp_path, listen)
    assert "supervisor.metrics.listen" in problem and why in problem
    assert "\n" not in problem


async def test_get_metrics_serves_the_registry_and_nothing_else() -> None:
    registry = CollectorRegistry()
    Counter("niodoo_supervisor_demo", "A counter.", registry=registry).inc(3)
    listen = f"127.0.0.1:{loopback_port(PORTS)}"
    async with metrics_endpoint(listen, registry) as served:
        assert served == listen
        async with httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False) as client:
            answer = await client.get("/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
            assert "niodoo_supervisor_demo_total 3.0" in answer.text
            assert (await client.get("/status")).status_code == 404
            assert (await client.post("/metrics")).status_code == 405
    with pytest.raises(httpx.ConnectError):  # closed on the way out
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.get(f"http://{listen}/metrics")


async def test_a_taken_port_is_a_warning_and_supervision_goes_on() -> None:
    port = loopback_port(PORTS)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with capture_logs() as logs:
            async with metrics_endpoint(f"127.0.0.1:{port}", CollectorRegistry()) as served:
                assert served is None
    (warning,) = [entry for entry in logs if entry["event"] == "metrics_not_served"]
    assert warning["key"] == "supervisor.metrics.listen"
    assert warning["log_level"] == "warning"


async def test_no_address_serves_nothing() -> None:
    async with metrics_endpoint(None, CollectorRegistry()) as served:
        assert served is None
