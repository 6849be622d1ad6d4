"""The `engine` and `lora` sections: GPU memory, parallelism and batching; the LoRA adapters.

Declared like `serving_sections.py`: one annotated field per key, a `VllmFlag` on each vLLM
option.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

from niodoo_supervisor.config.fields import Kind, RenderStyle, VllmFlag
from niodoo_supervisor.config.value_types import (
    Bool,
    Int,
    LocalPath,
    Number,
    Section,
    Text,
    TextList,
    WholeNumberOrAuto,
    rejected,
)
from niodoo_supervisor.config.versions import Version

__all__ = ["Adapter", "EngineSection", "LoraSection"]


class EngineSection(Section):
    """engine: GPU memory, parallelism, batching."""

    gpu_memory_utilization: Annotated[
        Number | None,
        Field(gt=0.0, le=1.0, description="Fraction of GPU memory vLLM may use, in (0, 1]."),
        VllmFlag("--gpu-memory-utilization", vllm_default="0.9 (0.92 from vLLM 0.20)"),
    ] = None
    tensor_parallel_size: Annotated[
        Int | None,
        Field(ge=1, description="GPUs a model is split across."),
        VllmFlag("--tensor-parallel-size", vllm_default=1),
    ] = None
    pipeline_parallel_size: Annotated[
        Int | None,
        Field(ge=1, description="Pipeline stages."),
        VllmFlag("--pipeline-parallel-size", vllm_default=1),
    ] = None
    data_parallel_size: Annotated[
        Int | None,
        Field(ge=1, description="Data-parallel replicas."),
        VllmFlag("--data-parallel-size", vllm_default=1),
    ] = None
    kv_cache_dtype: Annotated[
        Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "bfloat16"] | None,
        Field(description="Data type of the KV cache."),
        VllmFlag("--kv-cache-dtype", vllm_default="auto"),
    ] = None
    enforce_eager: Annotated[
        Bool | None,
        Field(description="Disable CUDA graphs (less memory, slower)."),
        VllmFlag("--enforce-eager", RenderStyle.SWITCH, vllm_default=False),
    ] = None
    max_num_seqs: Annotated[
        Int | None,
        Field(ge=1, description="Most sequences processed in one step."),
        VllmFlag("--max-num-seqs"),
    ] = None
    max_num_batched_tokens: Annotated[
        Int | None,
        Field(ge=1, description="Most tokens processed in one step."),
        VllmFlag("--max-num-batched-tokens"),
    ] = None
    seed: Annotated[Int | None, Field(ge=0, description="Random seed."), VllmFlag("--seed")] = None
    swap_space: Annotated[
        Number | None,
        Field(ge=0, description="CPU swap space per GPU in GiB."),
        VllmFlag("--swap-space", removed_in=Version(0, 18, 0), vllm_default=4),
    ] = None


def adapter_name_is_valid(name: str) -> bool:
    """What vLLM's `--lora-modules NAME=PATH` can carry (the control API checks it too)."""
    return not any(char.isspace() for char in name) and "=" not in name


def _adapter_name(name: str) -> str:
    if not adapter_name_is_valid(name):
        raise rejected(
            f"{name!r} contains whitespace or '='", "use letters, digits, '-', '_' or '.'"
        )
    return name


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Adapter:
    """One `lora.adapters` item; `path` is resolved against the config file's folder."""

    name: Annotated[
        Text,
        AfterValidator(_adapter_name),
        Field(
            description="What clients send as the request's `model`.",
            json_schema_extra={"pattern": r"^[^\s=]+$"},
        ),
    ]
    path: Annotated[LocalPath, Field(description="The adapter's directory.")]
    base_model_name: Annotated[
        Text | None, Field(description="The base model it was trained on.")
    ] = None


class LoraSection(Section):
    """lora: adapters."""

    enabled: Annotated[
        Bool,
        Field(
            description="Serve LoRA adapters. vLLM decides this at start: without it no adapter "
            "can be served."
        ),
        VllmFlag("--enable-lora", RenderStyle.SWITCH, vllm_default=False),
    ] = False
    max_loras: Annotated[
        Int | None,
        Field(
            ge=1,
            description="Adapters resident on the GPU at once (one batch can mix this many).",
        ),
        VllmFlag("--max-loras", vllm_default=1),
    ] = None
    # --max-lora-rank accepts only these; 0.10-0.11 lacked rank 1 (ValueError at engine start),
    # 0.12+ makes them argparse choices (exit 2). `vllm_options.lora_ranks_for` has the history.
    max_lora_rank: Annotated[
        Literal[1, 8, 16, 32, 64, 128, 256, 320, 512, "auto"] | None,
        WholeNumberOrAuto,
        Field(
            description="Largest adapter rank vLLM reserves memory for: one of 1, 8, 16, 32, 64, "
            "128, 256, 320, 512 (1 only from vLLM 0.12), or `auto`: the smallest of those >= the "
            "largest listed adapter's rank."
        ),
        VllmFlag("--max-lora-rank", allow_auto=True, vllm_default=16),
    ] = None
    lora_dtype: Annotated[
        Literal["auto", "float16", "bfloat16"] | None,
        Field(description="Data type of LoRA weights."),
        VllmFlag("--lora-dtype", vllm_default="auto"),
    ] = None
    max_cpu_loras: Annotated[
        Int | None,
        Field(ge=1, description="Adapters cached in CPU memory; must be >= max_loras."),
        VllmFlag("--max-cpu-loras", vllm_default="max_loras"),
    ] = None
    fully_sharded_loras: Annotated[
        Bool | None,
        Field(description="Shard LoRA computation fully across tensor-parallel ranks."),
        VllmFlag("--fully-sharded-loras", RenderStyle.SWITCH, vllm_default=False),
    ] = None
    target_modules: Annotated[
        TextList | None,
        Field(description="Restrict LoRA to these module names."),
        VllmFlag("--lora-target-modules", RenderStyle.VALUES, since=Version(0, 20, 0)),
    ] = None
    extra_vocab_size: Annotated[
        Int | None,
        Field(ge=0, description="Extra vocabulary slots for adapters."),
        VllmFlag("--lora-extra-vocab-size", removed_in=Version(0, 12, 0), vllm_default=256),
    ] = None
    runtime_updates: Annotated[
        Bool,
        Field(
            description="Add and remove adapters without restarting vLLM: a reload applies "
            "changes of `lora.adapters` through vLLM's /v1/load_lora_adapter and "
            "/v1/unload_lora_adapter, and `niodoo-supervisor adapters load|unload` works. The "
            "supervisor sets VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 for vLLM, which calls the "
            "feature meant for development. Not a vLLM flag; changing it restarts vLLM."
        ),
    ] = False
    verify: Annotated[
        Literal["off", "warn", "strict"],
        Field(
            description="Prove every adapter changes the output once vLLM lists it (at "
            "readiness and after each live change): one `max_tokens: 1` request with "
            "log-probabilities as the adapter and as the base model. `warn`: an adapter whose "
            "log-probabilities equal the base model's is reported (`adapter_no_effect`) and "
            "vLLM still becomes ready; `strict`: the start ends FATAL (exit 78: the same "
            "files do nothing after any restart) and a live load is undone; `off`: not asked. "
            "An adapter whose request fails (HTTP 4xx/5xx) fails the readiness check (or "
            "undoes the live load) unless `off`. Not a vLLM flag; applied without restarting "
            "vLLM, from the next start or adapter change."
        ),
    ] = "warn"
    lora_name_field: Annotated[
        Literal["log", "reject", "route"],
        Field(
            description="What happens to a request carrying a `lora_name` field, which vLLM "
            "ignores (the base model answers). `log`: vLLM serves it and the supervisor "
            "reports the field; `reject`: HTTP 400 saying to send the adapter's name as "
            "`model`; `route`: served by the adapter `lora_name` names when `model` is the "
            "base model or absent (an unknown name is a 400 listing the adapters). `reject` "
            "and `route` put a small middleware into vLLM (`--middleware`); changing this key "
            "restarts vLLM."
        ),
    ] = "log"
    adapters: Annotated[
        tuple[Adapter, ...],
        Kind.ADAPTERS,
        Field(
            description="Adapters loaded at start: a list of {name, path, base_model_name}. "
            "Clients select one by sending its name as the request's `model`."
        ),
        VllmFlag("--lora-modules", RenderStyle.VALUES),
    ] = ()
