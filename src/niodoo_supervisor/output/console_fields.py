"""The fields a console line shows after each event's name (its `summary`, when it has one,
comes first, bare). Rows of helper "progress"; helper "output" owns the table."""

from __future__ import annotations

CONSOLE_FIELDS: dict[str, tuple[str, ...]] = {
    # a start-up phase: the summary says what vLLM did, elapsed_s when (since launch)
    "progress": ("elapsed_s",),
    # the summary names the model, the adapters, the address and the time to ready
    "ready": (),
}
