"""`niodoo-supervisor ARGS...` whose launch plans carry the Ray companion a `ray` topology
asks for (`ray start --head --port=P --block` on rank 0, `ray start --address=HEAD:P
--block` after), as vLLM's docs give them. A stand-in for as long as the plan does not fill
`LaunchPlan.companion` itself (the rendering per role is another part of issue 13): a plan
that has a companion is left as it is."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from niodoo_supervisor.cli.main import main
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.topology import CompanionPlan
from niodoo_supervisor.supervise import daemon


def with_companion(plan_launch: Callable[..., LaunchPlan]) -> Callable[..., LaunchPlan]:
    def plan(config: Config, *args: Any, **kwargs: Any) -> LaunchPlan:
        planned = plan_launch(config, *args, **kwargs)
        role = planned.role
        if planned.companion is not None or role.backend != "ray":
            return planned
        ray, port = str(config.topology.ray_command), config.topology.ray_port
        where = "--head" if role.rank == 0 else f"--address={role.head_address}:{port}"
        argv = (ray, "start", where, *([f"--port={port}"] if role.rank == 0 else []), "--block")
        env = {"VLLM_HOST_IP": role.head_address or "127.0.0.1"}
        return dataclasses.replace(planned, companion=CompanionPlan("ray", argv, env))

    return plan


if __name__ == "__main__":
    setattr(daemon, "plan_launch", with_companion(plan_launch))  # noqa: B010
    sys.exit(main())
