"""Parse ``FAKE_VLLM_FAULTS``: which failures the fake injects, and when.

Switches (seconds are floats; "after ready" counts from ``Application startup complete.``):

``load_seconds=S``
    Simulated model load time (default 0.3). A progress line is printed at least
    every ~0.2 s while loading.
``exit_at_start``
    argparse-style ``unrecognized arguments`` error on stderr, exit 2, before anything else.
``crash_after=S``
    After ready: a raw Python traceback on stderr, children sent SIGTERM, exit 1.
``engine_death_after=S``
    After ready: the EngineCore logs ``EngineCore encountered a fatal error.`` and dies;
    the API server logs the EngineDeadError lines of ``02-enginecore-killed.log``,
    /health answers 503 while /v1/models keeps 200, then after
    ``engine_death_exit_after`` seconds the server exits 0 (unless
    ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1``). Killing the EngineCore from outside does the
    same, without the fatal-error lines.
``engine_death_exit_after=S``
    Delay between engine death and the exit (default 2.0; real vLLM takes ~4.5 s).
``hang_after=S``
    After ready: HTTP connections are accepted but never answered; the process lives on
    and still handles signals (add ``ignore_sigterm`` for a fully wedged server).
``rank_hang_after=S``
    After ready: completions sent to data-parallel rank ``hang_rank`` (vLLM's
    ``X-data-parallel-rank`` header) are accepted but never answered, as when a headless
    host's engine died (the head's /health stays 200); other requests are served.
``hang_rank=R``
    The rank ``rank_hang_after`` hangs (default 1).
``rank_slow_after=S``
    After ready: completions sent to data-parallel rank ``slow_rank`` answer only after
    ``slow_rank_seconds``, as an engine alive but busy behind a full batch.
``slow_rank=R``, ``slow_rank_seconds=S``
    The rank ``rank_slow_after`` slows (default 1), and by how much (default 2.0).

``no_completions``
    No ``/v1/completions`` route (404 Not Found), as vLLM serving a pooling model.

A completion pinned to a rank >= ``--data-parallel-size`` gets vLLM 0.32's 400
``data_parallel_rank R is out of range [0, N).`` (``v1/engine/input_processor.py``).
``ignore_sigterm``
    The API server ignores SIGTERM (SIGINT still works).
``stubborn_children``
    EngineCore and Worker ignore SIGTERM and SIGINT; only SIGKILL ends them. A graceful
    API server shutdown still force-kills them, as vLLM does, so this matters when the
    API server is SIGKILLed or ignores SIGTERM.
``drop_adapter_after=S``
    After ready: the first adapter silently disappears (from /v1/models and for requests).
``adapters_late=S``
    At ready, /health answers 200 but /v1/models lists no adapter for S seconds (as when
    adapters are still loading); then they are listed.
``exit_zero_after=S``
    After ready: children SIGKILLed and the API server exits 0, printing nothing.
``stream_chunk_seconds=S``
    Each chunk of a streamed completion waits S seconds (default 0: all at once), so a
    request can be in flight during a stop. A chunk due after the engine died is not sent:
    the stream is cut, as vLLM cuts it.
``chatty_lines=N``
    From the start, a thread writes N extra lines to stderr, each in two write() calls with
    a millisecond between the halves (a chunk ends mid-line about half the time), while the
    start goes on: for tests that the supervisor's own lines never glue to vLLM's.
``drain_teardown_seconds=S``
    After a drain (below) the HTTP server keeps answering for S s more, as vLLM's does while
    its engine and workers tear down (seconds on the CPU build): /metrics shows the
    requests at zero.

On SIGTERM with ``--shutdown-timeout N`` (N > 0) the API server drains as vLLM does: new
completions get 503, running ones may finish for up to N s while the EngineCore stays up
(unless someone else kills it), then the engine is stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["FaultError", "Faults", "parse_faults"]

_BOOL_TRUE = {"", "1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


class FaultError(ValueError):
    """``FAKE_VLLM_FAULTS`` names an unknown switch or has a bad value."""


@dataclass(frozen=True)
class Faults:
    load_seconds: float = 0.3
    exit_at_start: bool = False
    crash_after: float | None = None
    engine_death_after: float | None = None
    engine_death_exit_after: float = 2.0
    hang_after: float | None = None
    rank_hang_after: float | None = None
    hang_rank: float = 1.0
    rank_slow_after: float | None = None
    slow_rank: float = 1.0
    slow_rank_seconds: float = 2.0
    no_completions: bool = False
    ignore_sigterm: bool = False
    stubborn_children: bool = False
    drop_adapter_after: float | None = None
    exit_zero_after: float | None = None
    adapters_late: float | None = None
    stream_chunk_seconds: float = 0.0
    drain_teardown_seconds: float = 0.0
    chatty_lines: float = 0.0


_BOOL_SWITCHES = frozenset(
    {"exit_at_start", "ignore_sigterm", "stubborn_children", "no_completions"}
)
_FLOAT_SWITCHES = frozenset(f.name for f in fields(Faults)) - _BOOL_SWITCHES


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _BOOL_TRUE:
        return True
    if value in _BOOL_FALSE:
        return False
    raise FaultError(f"{name}: expected a boolean, got {raw!r}")


def _parse_seconds(name: str, raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        raise FaultError(f"{name}: expected seconds, got {raw!r}") from None
    if seconds < 0 or math.isnan(seconds):
        raise FaultError(f"{name}: seconds must be >= 0, got {raw!r}")
    return seconds


def parse_faults(spec: str) -> Faults:
    """``"load_seconds=2,ignore_sigterm"`` -> ``Faults``; raises ``FaultError``."""
    values: dict[str, Any] = {}
    for item in spec.split(","):
        item = item.strip()  # noqa: PLW2901 - normalising the loop value is the point
        if not item:
            continue
        name, has_value, raw = item.partition("=")
        name = name.strip()
        if name in _BOOL_SWITCHES:
            values[name] = _parse_bool(name, raw)
        elif name in _FLOAT_SWITCHES:
            if not has_value:
                raise FaultError(f"{name} needs a value in seconds, e.g. {name}=1.5")
            values[name] = _parse_seconds(name, raw)
        else:
            known = ", ".join(sorted(_BOOL_SWITCHES | _FLOAT_SWITCHES))
            raise FaultError(f"unknown fault {name!r} (known: {known})")
    return replace(Faults(), **values)
