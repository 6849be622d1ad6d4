"""The hints of the request-mistake events, written with the names the config serves: a client
that sent `lora_name` was answered by the base model, and a client asking for an unknown model
got a 404; both hints say which names to send as `model` instead.

The names come from the operator's config, not from the client; they are still bounded (a
config may list hundreds of adapters): at most `MAX_SHOWN` names, each cut to a short length (as a counted name is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from niodoo_supervisor.logs.counters import clip_field_name

__all__ = ["MAX_SHOWN", "ServedNames", "lora_name_hint", "unknown_model_hint"]

MAX_SHOWN = 5


@dataclass(frozen=True)
class ServedNames:
    """What vLLM serves under which name: the base model's `model` and the adapters'."""

    base: str
    adapters: tuple[str, ...] = ()


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(clip_field_name(name) for name in names[:MAX_SHOWN])
    more = len(names) - MAX_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def lora_name_hint(served: ServedNames | None) -> str:
    """vLLM has no `lora_name` field: what happened, and what the client must send."""
    what = (
        "vLLM has no `lora_name` request field: it dropped it and the request was answered "
        "by the BASE model"
    )
    if served is None:
        return f'{what}. Send the adapter\'s served name as `model` ("model": "<adapter>"); fix the client.'
    if not served.adapters:
        return (
            f"{what} ({clip_field_name(served.base)}), and this config serves no adapters: enable "
            "lora and list the adapter under lora.adapters, or fix the client."
        )
    return (
        f"{what} ({clip_field_name(served.base)}), not an adapter. Send the adapter's served name as "
        f'`model`, for example "model": "{clip_field_name(served.adapters[0])}" (served adapters: '
        f"{_listed(served.adapters)}); fix the client."
    )


def unknown_model_hint(served: ServedNames | None) -> str:
    """A request named a model vLLM does not serve: the names it does serve."""
    what = "A client asked for a model this vLLM does not serve and got HTTP 404"
    if served is None:
        return f"{what}: send a name /v1/models lists as `model`."
    names = (served.base, *served.adapters)
    return f"{what}: send one of the served names as `model` ({_listed(names)})."
