"""What the control API asks of the supervisor (`ControlTarget`) and what a command answers
(`CommandResult`). `supervise` implements the target; `control` serves it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["STOPPING", "CommandResult", "ControlTarget"]

# The refusal of a command that came too late: the server answers it 503, the CLI exits 3.
STOPPING = "the supervisor is stopping"


@dataclass(frozen=True)
class CommandResult:
    """An operator's command, answered: done or refused, one line saying what happened, and
    the details a machine may want (JSON-serialisable)."""

    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class ControlTarget(Protocol):
    def status(self) -> dict[str, Any]:
        """The status board as JSON-ready data (what status.json holds)."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Whether the supervisor takes traffic now (READY and not draining), and why not."""
        ...

    async def reload(self) -> CommandResult:
        """Read the config again; answers once the reload is taken or refused."""
        ...

    async def restart(self, *, now: bool) -> CommandResult:
        """A planned restart now, or at the next maintenance window (`now=False`)."""
        ...

    async def adapters(self) -> CommandResult:
        """The adapters expected and served."""
        ...

    async def load_adapter(self, name: str, path: str) -> CommandResult:
        """Load an adapter into the running vLLM (runtime LoRA updates)."""
        ...

    async def unload_adapter(self, name: str) -> CommandResult:
        """Unload an adapter from the running vLLM."""
        ...
