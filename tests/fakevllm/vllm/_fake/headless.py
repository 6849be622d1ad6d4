"""``vllm serve --headless``: vLLM's engines (data parallel) or workers (``--nnodes``) only,
no HTTP server, until stopped. Like vLLM 0.32 it never notices its head's death (the
multi-host research: a headless worker outlives its head for good)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vllm import __version__
from vllm._fake import texts
from vllm._fake.engine_client import spawn_engine
from vllm._fake.logs import emit

if TYPE_CHECKING:
    from vllm._fake.server import ApiServer

__all__ = ["run_headless"]

_POLL = 0.05


def run_headless(server: ApiServer) -> int:
    """The headless launcher's life: its launch line, the engine's start, then waiting."""
    args = server.args
    if args.nnodes > 1:
        emit(
            texts.HEADLESS_MP,
            logging.INFO,
            "Launching vLLM (v%s) headless multiproc executor, with head node address "
            "%s:%d for torch.distributed process group.",
            __version__,
            args.master_addr,
            args.master_port,
        )
    else:
        emit(
            texts.HEADLESS_DP,
            logging.INFO,
            "Launching %d data parallel engine(s) in headless mode, with head node "
            "address tcp://%s:%s.",
            args.data_parallel_size_local or 1,
            args.data_parallel_address,
            args.data_parallel_rpc_port,
        )
    server.engine = spawn_engine(server.engine_spec(), server.events)
    server.state.engine_pid = server.engine.pid
    outcome = server._wait_until_ready()
    if outcome is not None:
        return outcome
    server.ready = True
    server._write_state()
    while server._take_signal(_POLL) is None:
        if any(event.kind == "exit" for event in server._drain()):
            return 1  # the engine died: the launcher goes with it
    server.engine.shutdown("0s", stop_engine=True)
    server.engine.kill_all()
    return 0
