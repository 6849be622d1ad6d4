"""A `ControlTarget` that records the commands it is given and answers what a test sets: the
control server and the CLI verbs are tested against it (the real target is the supervisor's,
tested in the sim tier)."""

from __future__ import annotations

from typing import Any

from niodoo_supervisor.control.api import CommandResult


class FakeTarget:
    def __init__(self) -> None:
        self.ready = (True, "ready: serving tiny")
        self.calls: list[tuple[Any, ...]] = []
        self.result = CommandResult(True, "done")

    def status(self) -> dict[str, Any]:
        return {"state": "READY", "source": "daemon"}

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    async def reload(self) -> CommandResult:
        self.calls.append(("reload",))
        return self.result

    async def restart(self, *, now: bool) -> CommandResult:
        self.calls.append(("restart", now))
        return self.result

    async def adapters(self) -> CommandResult:
        self.calls.append(("adapters",))
        return CommandResult(True, "tiny + adapters a", {"adapters": ["a"]})

    async def load_adapter(self, name: str, path: str) -> CommandResult:
        self.calls.append(("load", name, path))
        return self.result

    async def unload_adapter(self, name: str) -> CommandResult:
        self.calls.append(("unload", name))
        return self.result
