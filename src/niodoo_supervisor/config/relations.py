"""Checks between keys of a config: LoRA settings while disabled, cache sizes, adapter names,
where the API key comes from. Pure: problems go to `report(path, message, fix, warning=...)`."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Report", "check_relations"]


class Report(Protocol):
    def __call__(
        self, path: str, message: str, fix: str = "", *, warning: bool = False
    ) -> None: ...


def check_relations(values: Mapping[str, Any], present: set[str], report: Report) -> None:
    lora_enabled = bool(values.get("lora.enabled"))
    lora_keys = sorted(key for key in present if key.startswith("lora.") and key != "lora.enabled")
    if not lora_enabled and lora_keys:
        report(
            lora_keys[0],
            f"LoRA settings ({', '.join(lora_keys)}) are set but lora.enabled is false",
            "set lora.enabled: true (vLLM decides at start), or remove them",
        )
    max_loras = values.get("lora.max_loras")
    max_cpu_loras = values.get("lora.max_cpu_loras")
    if isinstance(max_loras, int) and isinstance(max_cpu_loras, int) and max_cpu_loras < max_loras:
        report(
            "lora.max_cpu_loras",
            f"max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({max_loras}); vLLM refuses it at start",
            f"raise it to at least {max_loras} or remove it",
        )
    _check_adapter_names(values, report)
    _check_adapter_counts(values, lora_enabled, report)
    _check_api_key(values, report)
    shutdown, grace = (
        values.get("server.shutdown_timeout"),
        values.get("supervisor.stop.grace_period"),
    )
    if isinstance(shutdown, int) and isinstance(grace, float) and shutdown >= grace:
        report(
            "server.shutdown_timeout",
            f"vLLM may drain for {shutdown}s but the supervisor kills it after {grace:g}s",
            "make supervisor.stop.grace_period longer than server.shutdown_timeout",
            warning=True,
        )


def _check_adapter_names(values: Mapping[str, Any], report: Report) -> None:
    served = values.get("model.served_name") or values.get("model.path")
    seen: dict[str, int] = {}
    for index, adapter in enumerate(values.get("lora.adapters") or ()):
        path = f"lora.adapters[{index}].name"
        if adapter.name in seen:
            report(
                path,
                f"adapter name {adapter.name!r} is also lora.adapters[{seen[adapter.name]}]",
                "give each adapter its own name",
            )
        seen.setdefault(adapter.name, index)
        if adapter.name == served:
            report(
                path,
                f"adapter name {adapter.name!r} is the served model's name",
                "requests could not tell them apart: rename the adapter",
            )


def _check_adapter_counts(values: Mapping[str, Any], lora_enabled: bool, report: Report) -> None:
    adapters = values.get("lora.adapters") or ()
    if not lora_enabled or not adapters:
        return
    max_loras = values.get("lora.max_loras") or 1
    max_cpu = values.get("lora.max_cpu_loras") or max_loras
    if len(adapters) > max_cpu:
        report(
            "lora.adapters",
            f"{len(adapters)} adapters but only {max_cpu} fit in vLLM's CPU cache (max_cpu_loras); "
            "the least recently used are evicted and reloaded from disk on their next request",
            "raise lora.max_cpu_loras if that latency matters",
            warning=True,
        )
    elif len(adapters) > max_loras:
        report(
            "lora.adapters",
            f"{len(adapters)} adapters but max_loras is {max_loras}: one batch serves at most "
            f"{max_loras} of them, requests for others wait for a free slot",
            "raise lora.max_loras if they are used at the same time",
            warning=True,
        )


def _check_api_key(values: Mapping[str, Any], report: Report) -> None:
    key_env, key_file = (
        values.get("server.api_key_env"),
        values.get("server.api_key_file"),
    )
    if key_env and key_file:
        report(
            "server.api_key_file",
            "both api_key_env and api_key_file are set",
            "keep one of them",
        )
    if not key_env and not key_file and not _is_loopback(str(values.get("server.host"))):
        report(
            "server.host",
            f"vLLM listens on {values.get('server.host')} without an API key: anyone on the network can use it",
            "set server.api_key_file or server.api_key_env, or listen on 127.0.0.1",
            warning=True,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
