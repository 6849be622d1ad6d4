"""The two-hosts plumbing of tests/netns.py on its own (no vLLM): TCP over the veth pair, each
namespace's own loopback, and the cleanup. Needs root; skipped elsewhere, saying why."""

from __future__ import annotations

import subprocess
import sys

import pytest

import netns

LISTENER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
connection, peer = server.accept()
connection.sendall(f"hello {peer[0]}".encode())
connection.close()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as connection:
        print(connection.recv(100).decode())
except OSError as error:
    print(type(error).__name__)
"""


def _listen(host: netns.Host, address: str, port: int) -> subprocess.Popen[str]:
    listener = subprocess.Popen(
        host.argv([sys.executable, "-c", LISTENER, address, str(port)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "listening"
    return listener


def _connect(host: netns.Host, address: str, port: int) -> str:
    result = host.run([sys.executable, "-c", CLIENT, address, str(port)])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_listener_in_one_namespace_is_reached_from_the_other_over_the_veth() -> None:
    with netns.two_hosts() as pair:
        listener = _listen(pair.worker, pair.worker.address, 29555)
        try:
            answer = _connect(pair.head, pair.worker.address, 29555)
        finally:
            listener.wait(timeout=10)
        assert answer == f"hello {pair.head.address}"


def test_each_namespace_has_its_own_loopback() -> None:
    with netns.two_hosts() as pair:
        listener = _listen(pair.worker, "127.0.0.1", 29556)
        try:
            assert _connect(pair.head, "127.0.0.1", 29556) == "ConnectionRefusedError"
            assert _connect(pair.worker, "127.0.0.1", 29556) == "hello 127.0.0.1"
        finally:
            listener.wait(timeout=10)


def test_leaving_kills_what_runs_inside_and_deletes_both_namespaces() -> None:
    with netns.two_hosts() as pair:
        sleeper = subprocess.Popen(pair.worker.argv(["sleep", "300"]))
        names = {pair.head.namespace, pair.worker.namespace}
        assert names <= set(netns.namespaces())
    assert sleeper.wait(timeout=10) < 0  # killed by a signal
    assert not names & set(netns.namespaces())


def test_leftovers_of_a_dead_run_are_removed_and_those_of_a_live_run_kept() -> None:
    reason = netns.why_not_runnable()
    if reason:
        pytest.skip(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = f"{netns.PREFIX}{gone.pid}-0-head"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        with netns.two_hosts() as pair:  # removes the leftovers first
            assert leftover not in netns.namespaces()
            netns.remove_leftovers()
            assert {pair.head.namespace, pair.worker.namespace} <= set(netns.namespaces())
    finally:
        subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)
