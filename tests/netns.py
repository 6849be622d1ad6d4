"""Two "hosts" on this one machine: two network namespaces joined by a veth pair.

Each namespace has its own loopback, its own ports and one end of the veth pair with an
address of a private /24, so a process in one reaches the other only over the veth, as a
host reaches another over the network. Everything else (files, users, processes) is shared:
both see the checkout, the venvs and the model. Needs root (CAP_NET_ADMIN) and `ip`
(iproute2); without them `two_hosts()` skips the test, saying why.

Names carry the pid of the test process that made them (`niodoo-t<pid>-<n>-head`), so a later
run removes what a killed run left behind, and only that: a namespace of a run still alive
is not touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

PREFIX = "niodoo-t"
_NAME = re.compile(rf"{PREFIX}(\d+)-\d+-(head|worker)$")
# The two namespaces see only each other on the veth, so every pair may use the same subnet.
SUBNET = "10.213.0"
_COUNTER = itertools.count()


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its end of the veth pair and the address on it."""

    namespace: str
    interface: str  # interface names are per namespace: both pairs may use the same ones
    address: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run inside this namespace (the environment passes through)."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def run(self, command: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one (`ip netns pids`)."""
        result = _ip("netns", "pids", self.namespace)
        return [int(word) for word in result.stdout.split() if word.isdigit()]


@dataclass(frozen=True)
class HostPair:
    head: Host
    worker: Host


def why_not_runnable() -> str | None:
    """Why this machine cannot make network namespaces, or None."""
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to make network namespaces with `ip netns add`"
    return None


@contextlib.contextmanager
def two_hosts() -> Iterator[HostPair]:
    """Two namespaces joined by a veth pair, 10.213.0.1 (head) and .2 (worker), loopback up
    in both. On exit, whatever happened: every process still in either namespace is killed
    and both namespaces are deleted (which deletes the veth pair)."""
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    remove_leftovers()
    stem = f"{PREFIX}{os.getpid()}-{next(_COUNTER)}"
    pair = HostPair(
        Host(f"{stem}-head", "veth-head", f"{SUBNET}.1"),
        Host(f"{stem}-worker", "veth-worker", f"{SUBNET}.2"),
    )
    made: list[Host] = []
    try:
        for host in (pair.head, pair.worker):
            result = _ip("netns", "add", host.namespace)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` failed: {result.stderr.strip()}")
            made.append(host)
        _plumb(pair)
        yield pair
    finally:
        for host in made:
            _delete(host.namespace)


def remove_leftovers() -> None:
    """Delete namespaces of this module whose test process is gone (a run killed before its
    cleanup), with whatever still runs in them."""
    for name in namespaces():
        match = _NAME.match(name)
        if match and not _alive(int(match[1])):
            _delete(name)


def namespaces() -> list[str]:
    """The named network namespaces (`ip netns list`), first word of each line."""
    result = _ip("netns", "list")
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _plumb(pair: HostPair) -> None:
    """The veth pair, created with each end already in its namespace (nothing is left in the
    root namespace if this is interrupted), addresses, links up."""
    head, worker = pair.head, pair.worker
    steps = [
        ["link", "add", "name", head.interface, "netns", head.namespace, "type", "veth",
         "peer", "name", worker.interface, "netns", worker.namespace],
    ]  # fmt: skip
    for host in (head, worker):
        steps += [
            ["-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.interface],
            ["-n", host.namespace, "link", "set", host.interface, "up"],
            ["-n", host.namespace, "link", "set", "lo", "up"],
        ]
    for step in steps:
        result = _ip(*step)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(step)}: {result.stderr.strip()}")


def _delete(namespace: str) -> None:
    """Kill what runs in `namespace` (only test processes run there), then delete it."""
    for pid in Host(namespace, "", "").pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _ip("netns", "del", namespace)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
