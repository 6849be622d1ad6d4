"""The vLLM options a config can set, read off their declarations (`VllmFlag` metadata in the
config models), in the order of the rendered command line.

Each option is declared once, with its key: its flag, its type and range, vLLM's own default
(documented, never rendered: an absent key leaves the choice to vLLM) and the vLLM versions
that have the flag. A flag used with a vLLM that lacks it ends in an argparse error (exit 2),
which preflight catches first.
"""

from __future__ import annotations

from niodoo_supervisor.config.fields import Field
from niodoo_supervisor.config.loader import ALL_FIELDS
from niodoo_supervisor.config.versions import Version

__all__ = [
    "LORA_RANKS",
    "LORA_RANKS_BEFORE_0_12",
    "OLDEST_SUPPORTED",
    "QUANTIZATION_METHODS",
    "VLLM_OPTIONS",
    "lora_ranks_for",
    "option_for_flag",
]

OLDEST_SUPPORTED = Version(0, 10, 0)

# The order of the command line, which the golden tests and operators' diffs rely on.
_COMMAND_LINE_ORDER = (
    "model.path",
    "model.served_name",
    "server.host",
    "server.port",
    "model.quantization",
    "model.dtype",
    "engine.gpu_memory_utilization",
    "model.max_model_len",
    "engine.tensor_parallel_size",
    "engine.pipeline_parallel_size",
    "engine.data_parallel_size",
    "model.trust_remote_code",
    "model.tokenizer",
    "model.revision",
    "engine.kv_cache_dtype",
    "engine.enforce_eager",
    "engine.max_num_seqs",
    "engine.max_num_batched_tokens",
    "engine.seed",
    "engine.swap_space",
    "lora.enabled",
    "lora.max_loras",
    "lora.max_lora_rank",
    "lora.lora_dtype",
    "lora.max_cpu_loras",
    "lora.fully_sharded_loras",
    "lora.target_modules",
    "lora.extra_vocab_size",
    "lora.adapters",
    "server.uvicorn_log_level",
    "server.disable_access_log",
    "server.shutdown_timeout",  # deprecated alias of drain.timeout: at most one is set
    "drain.timeout",
)


def _in_command_line_order(fields: tuple[Field, ...]) -> tuple[Field, ...]:
    options = {spec.key: spec for spec in fields if spec.flag}
    if set(options) != set(_COMMAND_LINE_ORDER):
        # A new option needs its place on the command line; a removed one must leave it.
        raise RuntimeError(
            f"vLLM options and _COMMAND_LINE_ORDER differ: {set(options) ^ set(_COMMAND_LINE_ORDER)}"
        )
    return tuple(options[key] for key in _COMMAND_LINE_ORDER)


VLLM_OPTIONS: tuple[Field, ...] = _in_command_line_order(ALL_FIELDS)
_BY_KEY = {option.key: option for option in VLLM_OPTIONS}
_BY_FLAG = {option.flag: option for option in VLLM_OPTIONS if option.flag}

# --max-lora-rank accepts only these; 0.10-0.11 lacked rank 1 (ValueError at engine start),
# 0.12+ makes them argparse choices (exit 2).
LORA_RANKS: tuple[int, ...] = tuple(
    rank for rank in _BY_KEY["lora.max_lora_rank"].choices or () if isinstance(rank, int)
)
LORA_RANKS_BEFORE_0_12: tuple[int, ...] = tuple(rank for rank in LORA_RANKS if rank != 1)
# vLLM checks --quantization only when the model loads; a near miss of these is refused at once.
QUANTIZATION_METHODS: tuple[str, ...] = tuple(
    str(method) for method in _BY_KEY["model.quantization"].choices or ()
)


def lora_ranks_for(version: Version | None) -> tuple[int, ...]:
    """The --max-lora-rank values `version` accepts (unknown version: the current set)."""
    return (
        LORA_RANKS_BEFORE_0_12
        if version is not None and version < Version(0, 12, 0)
        else LORA_RANKS
    )


def option_for_flag(flag: str) -> Field | None:
    """The modelled option behind `flag` (for example to say which YAML key to use instead)."""
    return _BY_FLAG.get(flag.split("=", 1)[0])
