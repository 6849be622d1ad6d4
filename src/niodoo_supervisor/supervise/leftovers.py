"""Ending what a previous supervisor left of its vLLM (the run record's processes): at the
daemon's start, and before a start whose GPU memory a recorded session of ours still holds
(`gpu_memory`)."""

from __future__ import annotations

import os

import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.supervise import run_record
from niodoo_supervisor.supervise.process_tree import alive, terminate_processes

__all__ = ["end_leftovers"]

log = structlog.get_logger("niodoo_supervisor")


async def end_leftovers(config: Config) -> dict[int, str]:
    """End the recorded vLLM's processes that are still ours and clear the record; the pids
    ended, with their names."""
    record = run_record.read(config.state_dir)
    if record is None:
        run_record.clear(config.state_dir)  # an invalid record is not read twice
        return {}
    # Only processes running the interpreter this config launches: a record naming anything
    # else is stale or planted.
    executable = os.path.realpath(config.server.python)
    leftovers = run_record.leftover_processes(record, executable)
    if leftovers:
        log.warning(
            "leftovers_found",
            processes=[p.describe() for p in leftovers],
            reason="a previous supervisor did not stop its vLLM",
        )
        killed, survivors = await terminate_processes(
            leftovers, config.supervisor.stop.grace_period
        )
        if survivors:
            log.error("leftovers_survive", processes=[p.describe() for p in survivors])
        else:
            log.info("leftovers_ended", processes=len(leftovers), sigkilled=len(killed))
    ended = {p.pid for p in leftovers}
    skipped = [p for p in (record.leader, *record.members) if p.pid not in ended and alive(p)]
    if skipped:
        log.warning(
            "leftovers_skipped",
            processes=[p.describe() for p in skipped],
            reason="recorded processes still run but do not match what this supervisor launches "
            "(session, executable): not ended; if one holds the port, preflight names it",
        )
    run_record.clear(config.state_dir)
    return {p.pid: p.name for p in leftovers}
