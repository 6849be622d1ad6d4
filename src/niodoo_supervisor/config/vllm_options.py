"""The one table of vLLM options that a config can set.

Each option is declared once: its YAML key, its flag, its type and range, vLLM's own default
(documented, never rendered: an absent key leaves the choice to vLLM) and the vLLM versions that
have the flag. The order of the table is the order of the rendered command line.

Version facts come from vLLM's published wheels 0.9.2 to 0.33.0 (see VLLM_FACTS.md): a flag
used with a vLLM that lacks it ends in an argparse error (exit 2), which preflight catches first.
"""

from __future__ import annotations

from niodoo_supervisor.config.fields import Field, Kind, RenderStyle
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

# --max-lora-rank accepts only these; 0.10-0.11 lacked rank 1 (ValueError at engine start),
# 0.12+ makes them argparse choices (exit 2).
LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_RANKS_BEFORE_0_12: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 320, 512)


def lora_ranks_for(version: Version | None) -> tuple[int, ...]:
    """The --max-lora-rank values `version` accepts (unknown version: the current set)."""
    return (
        LORA_RANKS_BEFORE_0_12
        if version is not None and version < Version(0, 12, 0)
        else LORA_RANKS
    )


# vLLM takes --quantization as free text and checks it only when the model loads. The common
# methods are listed so that a typo is caught at once; an unknown method is only a warning.
QUANTIZATION_METHODS: tuple[str, ...] = (
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "gptq_marlin_24",
    "fp8",
    "fbgemm_fp8",
    "modelopt",
    "modelopt_fp4",
    "bitsandbytes",
    "gguf",
    "compressed-tensors",
    "experts_int8",
    "moe_wna16",
    "torchao",
    "mxfp4",
    "marlin",
    "inc",
)

_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

VLLM_OPTIONS: tuple[Field, ...] = (
    Field(
        "model.path",
        Kind.STR,
        "The model: a local directory (absolute, or starting with ./ ../ ~, resolved against "
        "the config file's folder) or a hub id, which vLLM resolves itself.",
        flag="--model",
        required=True,
    ),
    Field(
        "model.served_name",
        Kind.STR,
        "The name clients send as `model` and `/v1/models` lists; adapters name it as their "
        "`parent`. Absent: vLLM serves the model under its path.",
        flag="--served-model-name",
    ),
    Field(
        "server.host",
        Kind.STR,
        "Address vLLM listens on. 0.0.0.0 exposes it to the network: set an API key then.",
        default="127.0.0.1",
        flag="--host",
        vllm_default="all interfaces",
    ),
    Field(
        "server.port",
        Kind.INT,
        "TCP port of vLLM's OpenAI-compatible API; the supervisor probes it.",
        default=8000,
        flag="--port",
        minimum=1,
        maximum=65535,
        vllm_default=8000,
    ),
    Field(
        "model.quantization",
        Kind.STR,
        "Weight quantization (awq, awq_marlin, gptq, fp8, ...). Absent: vLLM reads it from the "
        "checkpoint; a value that disagrees with the checkpoint fails at load.",
        flag="--quantization",
        choices=QUANTIZATION_METHODS,
    ),
    Field(
        "model.dtype",
        Kind.STR,
        "Data type of weights and activations.",
        flag="--dtype",
        choices=_DTYPES,
        vllm_default="auto",
    ),
    Field(
        "engine.gpu_memory_utilization",
        Kind.FLOAT,
        "Fraction of GPU memory vLLM may use, in (0, 1].",
        flag="--gpu-memory-utilization",
        exclusive_minimum=0.0,
        maximum=1.0,
        vllm_default="0.9 (0.92 from vLLM 0.20)",
    ),
    Field(
        "model.max_model_len",
        Kind.INT,
        "Longest context (prompt + output tokens). Absent: the model's own limit.",
        flag="--max-model-len",
        minimum=1,
    ),
    Field(
        "engine.tensor_parallel_size",
        Kind.INT,
        "GPUs a model is split across.",
        flag="--tensor-parallel-size",
        minimum=1,
        vllm_default=1,
    ),
    Field(
        "engine.pipeline_parallel_size",
        Kind.INT,
        "Pipeline stages.",
        flag="--pipeline-parallel-size",
        minimum=1,
        vllm_default=1,
    ),
    Field(
        "engine.data_parallel_size",
        Kind.INT,
        "Data-parallel replicas.",
        flag="--data-parallel-size",
        minimum=1,
        vllm_default=1,
    ),
    Field(
        "model.trust_remote_code",
        Kind.BOOL,
        "Run the model repository's own Python code.",
        flag="--trust-remote-code",
        render=RenderStyle.SWITCH,
        vllm_default=False,
    ),
    Field(
        "model.tokenizer",
        Kind.STR,
        "Tokenizer name or path, when it differs from the model.",
        flag="--tokenizer",
    ),
    Field(
        "model.revision",
        Kind.STR,
        "Model revision (branch, tag or commit) for a hub model.",
        flag="--revision",
    ),
    Field(
        "engine.kv_cache_dtype",
        Kind.STR,
        "Data type of the KV cache.",
        flag="--kv-cache-dtype",
        choices=("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "bfloat16"),
        vllm_default="auto",
    ),
    Field(
        "engine.enforce_eager",
        Kind.BOOL,
        "Disable CUDA graphs (less memory, slower).",
        flag="--enforce-eager",
        render=RenderStyle.SWITCH,
        vllm_default=False,
    ),
    Field(
        "engine.max_num_seqs",
        Kind.INT,
        "Most sequences processed in one step.",
        flag="--max-num-seqs",
        minimum=1,
    ),
    Field(
        "engine.max_num_batched_tokens",
        Kind.INT,
        "Most tokens processed in one step.",
        flag="--max-num-batched-tokens",
        minimum=1,
    ),
    Field(
        "engine.seed",
        Kind.INT,
        "Random seed.",
        flag="--seed",
        minimum=0,
    ),
    Field(
        "engine.swap_space",
        Kind.FLOAT,
        "CPU swap space per GPU in GiB.",
        flag="--swap-space",
        minimum=0,
        removed_in=Version(0, 18, 0),
        vllm_default=4,
    ),
    Field(
        "lora.enabled",
        Kind.BOOL,
        "Serve LoRA adapters. vLLM decides this at start: without it no adapter can be served.",
        default=False,
        flag="--enable-lora",
        render=RenderStyle.SWITCH,
        vllm_default=False,
    ),
    Field(
        "lora.max_loras",
        Kind.INT,
        "Adapters resident on the GPU at once (one batch can mix this many).",
        flag="--max-loras",
        minimum=1,
        vllm_default=1,
    ),
    Field(
        "lora.max_lora_rank",
        Kind.INT,
        "Largest adapter rank vLLM reserves memory for: one of 1, 8, 16, 32, 64, 128, 256, 320, "
        "512 (1 only from vLLM 0.12), or `auto`: the smallest of those >= the largest listed "
        "adapter's rank.",
        flag="--max-lora-rank",
        choices=LORA_RANKS,
        allow_auto=True,
        vllm_default=16,
    ),
    Field(
        "lora.lora_dtype",
        Kind.STR,
        "Data type of LoRA weights.",
        flag="--lora-dtype",
        choices=("auto", "float16", "bfloat16"),
        vllm_default="auto",
    ),
    Field(
        "lora.max_cpu_loras",
        Kind.INT,
        "Adapters cached in CPU memory; must be >= max_loras.",
        flag="--max-cpu-loras",
        minimum=1,
        vllm_default="max_loras",
    ),
    Field(
        "lora.fully_sharded_loras",
        Kind.BOOL,
        "Shard LoRA computation fully across tensor-parallel ranks.",
        flag="--fully-sharded-loras",
        render=RenderStyle.SWITCH,
        vllm_default=False,
    ),
    Field(
        "lora.target_modules",
        Kind.STR_LIST,
        "Restrict LoRA to these module names.",
        flag="--lora-target-modules",
        render=RenderStyle.VALUES,
        since=Version(0, 20, 0),
    ),
    Field(
        "lora.extra_vocab_size",
        Kind.INT,
        "Extra vocabulary slots for adapters.",
        flag="--lora-extra-vocab-size",
        minimum=0,
        removed_in=Version(0, 12, 0),
        vllm_default=256,
    ),
    Field(
        "lora.adapters",
        Kind.ADAPTERS,
        "Adapters loaded at start: a list of {name, path, base_model_name}. Clients select one "
        "by sending its name as the request's `model`.",
        flag="--lora-modules",
        render=RenderStyle.VALUES,
    ),
    Field(
        "server.uvicorn_log_level",
        Kind.STR,
        "Log level of vLLM's HTTP server.",
        flag="--uvicorn-log-level",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        vllm_default="info",
    ),
    Field(
        "server.disable_access_log",
        Kind.BOOL,
        "Drop one log line per HTTP request.",
        flag="--disable-uvicorn-access-log",
        render=RenderStyle.SWITCH,
        vllm_default=False,
    ),
    Field(
        "server.shutdown_timeout",
        Kind.INT,
        "Seconds vLLM drains in-flight requests after SIGTERM (0 aborts them). Keep it below "
        "supervisor.stop.grace_period.",
        flag="--shutdown-timeout",
        minimum=0,
        since=Version(0, 18, 0),
        vllm_default=0,
    ),
)

_BY_FLAG = {option.flag: option for option in VLLM_OPTIONS if option.flag}


def option_for_flag(flag: str) -> Field | None:
    """The modelled option behind `flag` (for example to say which YAML key to use instead)."""
    return _BY_FLAG.get(flag.split("=", 1)[0])
