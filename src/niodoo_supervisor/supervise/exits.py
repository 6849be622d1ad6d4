"""Decode how a child ended. Pure."""

from __future__ import annotations

import signal

__all__ = ["describe_exit"]


def describe_exit(returncode: int) -> str:
    """asyncio/subprocess return codes: >= 0 an exit status, < 0 the number of the killing signal."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"
