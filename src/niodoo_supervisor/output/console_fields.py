"""The fields the console shows for an event, in order: only what a person needs at a glance.

The journal's renderings (logfmt, JSON) keep every field. An event with no row here shows
all its fields on the console. A field holding a mapping (a vLLM event's `details`) shows its
items as fields of their own.
"""

from __future__ import annotations

__all__ = ["CONSOLE_FIELDS"]

CONSOLE_FIELDS: dict[str, tuple[str, ...]] = {
    "starting": ("config", "vllm_log"),
    "state_changed": ("old", "new", "reason"),
    # The whole vLLM line stays in the vLLM log file and the journal.
    "vllm_event": ("rule", "details", "hint", "stop_requested"),
    "crash_report": ("reason", "rule"),
    # a start-up phase: the summary says what vLLM did, elapsed_s when (since launch)
    "progress": ("elapsed_s",),
    # the summary names the model, the adapters, the address and the time to ready
    "ready": (),
    # the summary names the adapter and how far it moves the base model's log-probabilities
    "adapter_effect": (),
}
