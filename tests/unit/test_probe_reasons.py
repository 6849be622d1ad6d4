"""Probe failure reasons reach the journal, status.json and systemd's STATUS= (readable by
every local user): they must never carry the API key, whatever the HTTP stack says. (Other
errors that quote the key: test_supervision_parts.py.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from niodoo_supervisor.supervise.probes import HttpProber

# h11 refuses a header value with a newline and quotes it whole in its error:
# "Illegal header value b'Bearer sk-...\n'".
KEY_HTTPX_REFUSES = "sk-reason-test-0123456789\n"


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


async def test_a_key_the_http_stack_refuses_is_not_in_the_reason(listening_port: int) -> None:
    prober = HttpProber(
        f"http://127.0.0.1:{listening_port}",
        served="m",
        adapters=[],
        api_key=KEY_HTTPX_REFUSES,
        timeout=10.0,
    )
    try:
        result = await prober.check()
    finally:
        await prober.aclose()
    assert not result.ok and result.health.status is None
    assert result.reason == (
        "/health: the request could not be sent: a header value is invalid (check the API key)"
    )
    assert KEY_HTTPX_REFUSES.strip() not in result.reason
