"""Two hosts on this one machine (two network namespaces joined by a veth pair, tests/netns.py),
one supervisor on each, serving the demo model with vLLM's data parallelism across both: the
head (rank 0) runs the API servers and engine 0, the other host (rank 1) runs engine 1
headless. Both read the same YAML; the rank comes from NIODOO_NODE_RANK.

Data parallel is what the CPU build serves across hosts without extra settings; `--nnodes`
(mp) needs GLOO_SOCKET_IFNAME as well and Ray does not run on the CPU build at all
(docs/topology.md). One run takes about 5 minutes on 2 cores: both vLLMs load at once, then
the headless one is killed and both start again. Needs root for the namespaces; skipped
elsewhere, saying why. Do not run it beside other real-vLLM tests: the engines pin cores.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import netns
from harness import (
    Notification,
    NotifySocket,
    SupervisorRun,
    start_supervisor,
    stop_supervisor,
    wait_for,
)
from niodoo_supervisor.demo.model import DemoModel
from realvllm import record_figure, write_demo_config

START_TIMEOUT = 420  # both vLLMs load at once on 2 cores: 2.5 minutes here, 4.5 when busy
STATE_DIR_VARIABLE = "NIODOO_TEST_STATE_DIR"  # one YAML, a state folder per host
API_KEY = "two-hosts-test-key"  # the head's API listens on every address of its namespace
# Runs inside the worker's namespace: one /v1/completions per entry of the JSON list, sent to
# the data-parallel engine it names (vLLM's X-data-parallel-rank header; null: vLLM picks),
# printing the status codes (or the error's name) as JSON.
CLIENT = """
import json, sys, httpx
url, ranks, timeout, key = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}
results = []
with httpx.Client(timeout=timeout, trust_env=False) as client:
    for rank in ranks:
        headers = {"Authorization": f"Bearer {key}"}
        if rank is not None:
            headers["X-data-parallel-rank"] = str(rank)
        try:
            results.append(client.post(url, json=body, headers=headers).status_code)
        except httpx.HTTPError as error:
            results.append(type(error).__name__)
print(json.dumps(results))
"""


@dataclass
class Node:
    host: netns.Host
    run: SupervisorRun
    launched: float


@dataclass
class Cluster:
    hosts: netns.HostPair
    head: Node
    worker: Node
    url: str  # the head's completions endpoint, as the worker's namespace reaches it


def _write_config(tmp: Path, vllm_python: str, model: DemoModel, head: netns.Host) -> Path:
    """The demo's config (tests' probe timings) without adapters, as data parallel 2 over the
    two hosts; the one file both supervisors read."""
    path = write_demo_config(tmp, vllm_python, model)
    config = yaml.safe_load(path.read_text())
    key = tmp / "api-key"
    key.write_text(API_KEY)
    key.chmod(0o600)
    # The head's API answers on the veth too, behind a key.
    config["server"].update(launcher="serve", host="0.0.0.0", api_key_file=str(key))
    config["lora"] = {"enabled": False}
    config["engine"] = {"data_parallel_size": 2}
    config["topology"] = {
        "backend": "dp",
        "nodes": 2,
        "head_address": head.address,
        "data_parallel_size_local": 1,
        "engine_timeout": 3,
    }
    config["supervisor"].update(
        state_dir=f"${{{STATE_DIR_VARIABLE}}}",
        startup_timeout=START_TIMEOUT,
        # A headless engine waits silently for the head (and, once restarted, for the head's
        # restart): no start-up line for minutes is no stall here.
        startup_stall_timeout=START_TIMEOUT,
    )
    path.write_text(yaml.safe_dump(config))
    return path


def _start(stack: ExitStack, config: Path, host: netns.Host, rank: int, tmp: Path) -> Node:
    """This host's supervisor inside its namespace, as a host's unit would start it."""
    tmp.mkdir()
    notify = NotifySocket(tmp / "notify.sock")  # a path: reachable from any namespace
    stack.callback(notify.close)
    env = {
        "NIODOO_NODE_RANK": str(rank),
        "VLLM_HOST_IP": host.address,  # vLLM's own address for its peers
        "GLOO_SOCKET_IFNAME": host.interface,  # not needed by dp; what every host's drop-in sets
        STATE_DIR_VARIABLE: str(tmp / "state"),
    }
    launched = time.monotonic()
    run = start_supervisor(config, tmp / "state", notify, tmp, extra_env=env, wrap=host.argv([]))
    stack.callback(stop_supervisor, run)
    return Node(host, run, launched)


@pytest.fixture(scope="module")
def cluster(e2e_tmp: Path, vllm_python: str, demo_model: DemoModel) -> Iterator[Cluster]:
    tmp = e2e_tmp / "two-hosts"
    tmp.mkdir()
    with netns.two_hosts() as hosts, ExitStack() as stack:
        config = _write_config(tmp, vllm_python, demo_model, hosts.head)
        head = _start(stack, config, hosts.head, 0, tmp / "head")
        worker = _start(stack, config, hosts.worker, 1, tmp / "worker")
        port = int(yaml.safe_load(config.read_text())["server"]["port"])
        url = f"http://{hosts.head.address}:{port}/v1/completions"
        yield Cluster(hosts, head, worker, url)


def _complete(cluster: Cluster, ranks: Sequence[int | None], timeout: float) -> list[object]:
    """Completions sent from the worker's namespace to the head's API over the veth."""
    command = [sys.executable, "-c", CLIENT, cluster.url, json.dumps(ranks), str(timeout), API_KEY]
    result = cluster.worker.host.run(command, timeout=timeout * len(ranks) + 30)
    assert result.returncode == 0, result.stderr
    answers: list[object] = json.loads(result.stdout)
    return answers


def _ready(node: Node, count: int) -> Notification:
    """The `count`-th READY=1 this host's supervisor sent (one per start that got ready),
    once status.json says READY too."""

    def nth() -> Notification | None:
        readies = [m for m in node.run.notify.snapshot() if m.fields.get("READY") == "1"]
        return readies[count - 1] if len(readies) >= count else None

    ready = wait_for(nth, START_TIMEOUT, f"READY=1 #{count}; states so far {node.run.states()}")
    assert ready is not None
    node.run.wait_state("READY", 30)
    return ready


def _role(node: Node) -> dict[str, object]:
    result = node.run.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    role = json.loads(result.stdout)["role"]
    assert isinstance(role, dict)
    return role


def test_both_hosts_get_ready_and_both_engines_answer_from_the_other_host(
    cluster: Cluster,
) -> None:
    for role, node in (("head", cluster.head), ("headless", cluster.worker)):
        took = _ready(node, 1).at - node.launched
        record_figure(f"two hosts (dp 2): {role} launch -> READY=1 {took:.1f}s")
    # Engine 0 runs on the head, engine 1 on the worker: vLLM serves a request pinned to an
    # engine only through that engine, so 200s on both prove both hosts serve.
    ranks: list[int | None] = [0, 1, 0, 1, None, None]
    started = time.monotonic()
    answers = _complete(cluster, ranks, timeout=60)
    assert answers == [200] * len(ranks), answers
    record_figure(
        f"two hosts (dp 2): {len(ranks)} completions worker -> head, engines 0 and 1: "
        f"{time.monotonic() - started:.2f}s"
    )


def test_each_host_reports_its_role(cluster: Cluster) -> None:
    ready = _ready(cluster.worker, 1)
    head, worker = _role(cluster.head), _role(cluster.worker)
    assert (head["role"], head["rank"], head["api_server"]) == ("head", 0, True)
    assert (worker["role"], worker["rank"], worker["api_server"]) == ("headless", 1, False)
    assert worker["backend"] == "dp" and worker["nodes"] == 2
    assert "headless rank 1 of 2 (dp)" in ready.fields["STATUS"], ready.fields


def test_killed_headless_vllm_is_restarted_and_serves_again_once_the_head_restarts(
    cluster: Cluster,
) -> None:
    """vLLM's head takes its engines' handshake only while it starts (vLLM 0.32: the
    --data-parallel-rpc-port listens only then; an engine waits 5 minutes for it), so an
    engine that comes back cannot rejoin a running head, which goes on answering /health 200
    meanwhile: the worker's supervisor restarts its part, and the head's supervisor, whose
    liveness checks ask each engine, finds engine 1 silent and restarts the head; then both
    serve again, with nobody's `restart`."""
    head, worker = cluster.head, cluster.worker
    _ready(worker, 1)
    _ready(head, 1)
    leader = worker.run.status()["vllm_pid"]
    assert isinstance(leader, int)
    killed = time.monotonic()
    os.killpg(leader, signal.SIGKILL)  # the supervisor made vLLM lead its own session
    wait_for(
        lambda: worker.run.status().get("vllm_pid") not in (None, leader),
        60,
        f"a new headless vLLM; states {worker.run.states()}",
    )
    record_figure(
        f"two hosts (dp 2): headless vLLM SIGKILLed -> relaunched {time.monotonic() - killed:.1f}s"
    )
    restart = wait_for(
        lambda: head.run.event("state_changed", new="BACKOFF"),
        120,
        f"the head restarting itself; states {head.run.states()}",
    )
    assert restart is not None and "engine 1 (rank 1, node 1)" in restart["reason"], restart
    record_figure(
        f"two hosts (dp 2): headless vLLM SIGKILLed -> head restarts itself "
        f"{time.monotonic() - killed:.1f}s"
    )
    again = max(_ready(head, 2).at, _ready(worker, 2).at)
    record_figure(
        f"two hosts (dp 2): headless vLLM SIGKILLed -> both READY=1 again {again - killed:.1f}s"
    )
    assert _complete(cluster, [0, 1], timeout=60) == [200, 200]


def test_sigterm_stops_both_hosts_and_leaves_nothing_in_either_namespace(
    cluster: Cluster,
) -> None:
    nodes = (cluster.head, cluster.worker)
    started = time.monotonic()
    for node in nodes:
        node.run.signal(signal.SIGTERM)
    for node in nodes:
        assert node.run.wait_exit(90) == 0, node.run.stderr()[-3000:]
    record_figure(
        f"two hosts (dp 2): SIGTERM -> both supervisors exited {time.monotonic() - started:.1f}s"
    )
    # Everything started in a namespace stays in it: nothing left there is nothing left.
    hosts = (cluster.hosts.head, cluster.hosts.worker)
    wait_for(
        lambda: not [pid for host in hosts for pid in host.pids()],
        10,
        "no process left in either namespace",
    )
