"""Checks between keys of a config: LoRA settings while disabled, cache sizes, adapter names,
where the API key comes from. Pure: problems go to `report(path, message, fix, warning=...)`.

A check between keys runs when every key it reads is valid on its own (`wrong` names the keys
and sections that are not): a relation between invalid values says nothing, and one read off a
wrong key's default would mislead.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from niodoo_supervisor.config.drain_sections import DrainSection
from niodoo_supervisor.config.engine_sections import EngineSection, LoraSection
from niodoo_supervisor.config.maintenance_sections import MaintenanceSection
from niodoo_supervisor.config.serving_sections import ModelSection, ServerSection
from niodoo_supervisor.config.supervisor_sections import SupervisorSection
from niodoo_supervisor.config.topology_relations import check_topology, is_loopback
from niodoo_supervisor.config.topology_sections import TopologySection

__all__ = ["Report", "Sections", "check_relations"]


class Report(Protocol):
    def __call__(
        self, path: str, message: str, fix: str = "", *, warning: bool = False
    ) -> None: ...


class Sections(Protocol):
    """The sections the relations read (a `loader.Config`)."""

    @property
    def model(self) -> ModelSection: ...
    @property
    def server(self) -> ServerSection: ...
    @property
    def lora(self) -> LoraSection: ...
    @property
    def supervisor(self) -> SupervisorSection: ...
    @property
    def maintenance(self) -> MaintenanceSection: ...
    @property
    def drain(self) -> DrainSection: ...
    @property
    def engine(self) -> EngineSection: ...
    @property
    def topology(self) -> TopologySection: ...


def check_relations(config: Sections, report: Report, wrong: Collection[str] = ()) -> None:
    def valid(*keys: str) -> bool:
        return not any(key == bad or key.startswith(bad + ".") for key in keys for bad in wrong)

    lora = config.lora
    lora_keys = sorted(f"lora.{key}" for key in lora.model_fields_set - {"enabled"})
    if not lora.enabled and lora_keys and valid("lora.enabled"):
        report(
            lora_keys[0],
            f"LoRA settings ({', '.join(lora_keys)}) are set but lora.enabled is false",
            "set lora.enabled: true (vLLM decides at start), or remove them",
        )
    if (
        lora.max_loras is not None
        and lora.max_cpu_loras is not None
        and lora.max_cpu_loras < lora.max_loras
    ):
        report(
            "lora.max_cpu_loras",
            f"max_cpu_loras ({lora.max_cpu_loras}) must be >= max_loras ({lora.max_loras}); vLLM refuses it at start",
            f"raise it to at least {lora.max_loras} or remove it",
        )
    if valid("lora.adapters", "model.served_name", "model.path"):
        _check_adapter_names(config, report)
    if valid("lora.enabled", "lora.max_loras", "lora.max_cpu_loras", "lora.adapters"):
        _check_adapter_counts(lora, report)
    if lora.enabled and lora.runtime_updates:
        report(
            "lora.runtime_updates",
            "vLLM calls runtime LoRA updating (VLLM_ALLOW_RUNTIME_LORA_UPDATING) a development "
            "feature: anyone who reaches its API can load and unload adapters",
            "keep vLLM's port private (loopback, an API key), or set it to false",
            warning=True,
        )
    if valid("server.api_key_env", "server.api_key_file", "server.host"):
        _check_api_key(config.server, report)
    if valid("server.shutdown_timeout", "drain.timeout"):
        _check_drain_timeout_alias(config, report)
    check_topology(config, report, wrong)  # sizes and keys of vLLM across hosts


def _check_drain_timeout_alias(config: Sections, report: Report) -> None:
    if config.server.shutdown_timeout is None:
        return
    if config.drain.timeout is not None:
        report(
            "server.shutdown_timeout",
            "both server.shutdown_timeout and drain.timeout are set",
            "keep drain.timeout (server.shutdown_timeout is its deprecated old name)",
        )
        return
    report(
        "server.shutdown_timeout",
        "server.shutdown_timeout is deprecated",
        f"rename it to drain.timeout: {config.server.shutdown_timeout}",
        warning=True,
    )


def _check_adapter_names(config: Sections, report: Report) -> None:
    served = config.model.served_name or config.model.path
    seen: dict[str, int] = {}
    for index, adapter in enumerate(config.lora.adapters):
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


def _check_adapter_counts(lora: LoraSection, report: Report) -> None:
    adapters = lora.adapters
    if not lora.enabled or not adapters:
        return
    max_loras = lora.max_loras or 1
    max_cpu = lora.max_cpu_loras or max_loras
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


def _check_api_key(server: ServerSection, report: Report) -> None:
    if server.api_key_env and server.api_key_file:
        report(
            "server.api_key_file",
            "both api_key_env and api_key_file are set",
            "keep one of them",
        )
    if not server.api_key_env and not server.api_key_file and not is_loopback(server.host):
        report(
            "server.host",
            f"vLLM listens on {server.host} without an API key: anyone on the network can use it",
            "set server.api_key_file or server.api_key_env, or listen on 127.0.0.1",
            warning=True,
        )
