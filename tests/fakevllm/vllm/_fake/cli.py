"""The command line of vLLM 0.32's API server, reduced to the flags a supervisor renders.

Two launchers share the arguments, as in vLLM: ``python -m vllm.entrypoints.openai.api_server``
(prog ``api_server.py``) and ``python -m vllm.entrypoints.cli.main serve MODEL`` (``vllm
serve``; prog ``main.py``). Unknown flags fail like vLLM's parser: usage and
``api_server.py: error: unrecognized arguments: ...`` on stderr, exit 2.

Arguments are declared in the order of vLLM's own parser, so ``non_default_args`` prints
its dict in the same key order as the real ``non-default args: {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vllm import __version__

__all__ = [
    "LoRAModulePath",
    "build_parser",
    "build_serve_parsers",
    "move_model_flag",
    "non_default_args",
    "parse_args",
]

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
KV_CACHE_DTYPES = [
    *("auto", "bfloat16", "float16", "fp8", "fp8_ds_mla", "fp8_e4m3", "fp8_e5m2", "fp8_inc"),
    *("fp8_per_token_head", "int4_per_token_head", "int8_per_token_head", "nvfp4"),
    *("nvfp4_4over6", "nvfp4_ds_mla", "turboquant_3bit_nc", "turboquant_4bit_nc"),
    *("turboquant_k3v4_nc", "turboquant_k8v4", "ultraquant_4bit"),
]
_SENSITIVE = frozenset({"api_key"})


@dataclass
class LoRAModulePath:
    """Same name and fields as vLLM's, so its repr in the log line is identical."""

    name: str
    path: str
    base_model_name: str | None = None
    is_3d_lora_weight: bool = False


class _LoRAParserAction(argparse.Action):
    """``name=path`` or a JSON object per value, like vLLM's ``LoRAParserAction``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        items = [] if values is None else [values] if isinstance(values, str) else values
        modules: list[LoRAModulePath] = []
        for item in items:
            if not item:
                continue
            if "=" in item and "," not in item:
                name, path = item.split("=", 1)
                modules.append(LoRAModulePath(name, path))
                continue
            try:
                fields = json.loads(item)
                modules.append(LoRAModulePath(**fields))
            except json.JSONDecodeError:
                parser.error(f"Invalid JSON format for --lora-modules: {item}")
            except TypeError as e:
                parser.error(f"Invalid fields for --lora-modules: {item} - {e}")
        setattr(namespace, self.dest, modules)


def _human_int(value: str) -> int:
    # vLLM accepts 32k (x1000) and 32K (x1024) for token counts.
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}")
    number, suffix = float(match.group(1)), match.group(2)
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
    return int(number * scale[suffix])


def _add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    bool_flag = argparse.BooleanOptionalAction
    add = parser.add_argument
    add("model_tag", nargs="?", default=None)
    add("--lora-modules", nargs="+", action=_LoRAParserAction, default=None)
    add("--host", default=None)
    add("--port", type=int, default=8000)
    add(
        "--uvicorn-log-level",
        default="info",
        choices=["critical", "debug", "error", "info", "trace", "warning"],
    )
    add("--disable-uvicorn-access-log", action=bool_flag, default=False)
    add("--api-key", nargs="+", default=None)
    add("--model", default="Qwen/Qwen3-0.6B")
    add("--tokenizer", default=None)
    add("--trust-remote-code", action=bool_flag, default=False)
    add(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float", "float16", "float32", "half"],
    )
    add("--seed", type=int, default=0)
    add("--revision", default=None)
    add("--max-model-len", type=_human_int, default=None)
    add("--quantization", "-q", default=None)
    add("--enforce-eager", action=bool_flag, default=False)
    add("--served-model-name", nargs="+", default=None)
    add("--pipeline-parallel-size", "-pp", type=int, default=1)
    add("--tensor-parallel-size", "-tp", type=int, default=1)
    add("--data-parallel-size", "-dp", type=int, default=1)
    add("--gpu-memory-utilization", type=float, default=0.92)
    add("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    add("--enable-prefix-caching", action=bool_flag, default=None)
    add("--enable-lora", action=bool_flag, default=False)
    add("--max-loras", type=int, default=1)
    add("--max-lora-rank", type=int, default=16, choices=MAX_LORA_RANKS)
    add("--lora-dtype", default="auto", choices=["auto", "bfloat16", "float16"])
    add("--max-cpu-loras", type=int, default=None)
    add("--fully-sharded-loras", action=bool_flag, default=False)
    add("--lora-target-modules", nargs="+", default=None)
    add("--max-num-batched-tokens", type=_human_int, default=None)
    add("--max-num-seqs", type=int, default=None)
    add("--shutdown-timeout", type=int, default=0)
    # Serving across hosts (vLLM's engine args; `--headless` is the `serve` sub-parser's).
    add("--nnodes", "-n", type=int, default=1)
    add("--node-rank", "-r", type=int, default=0)
    add("--master-addr", default="127.0.0.1")
    add("--master-port", type=int, default=29501)
    add("--data-parallel-size-local", "-dpl", type=int, default=None)
    add("--data-parallel-address", "-dpa", default=None)
    add("--data-parallel-rpc-port", "-dpp", type=int, default=None)
    add("--data-parallel-start-rank", "-dpr", type=int, default=None)
    add("--data-parallel-backend", "-dpb", default="mp", choices=["mp", "ray"])
    add("--distributed-executor-backend", default=None, choices=["mp", "ray", "uni"])
    return parser


# The fake knows fewer flags than vLLM; abbreviations could then match a flag vLLM would
# call ambiguous, so the fake accepts full names only.
def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m vllm.entrypoints.openai.api_server`` (prog api_server.py)."""
    return _add_arguments(
        argparse.ArgumentParser(
            description="vLLM OpenAI-Compatible RESTful API server.", allow_abbrev=False
        )
    )


def build_serve_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``vllm serve``: the CLI's top-level parser and its ``serve`` sub-parser."""
    top = argparse.ArgumentParser(description="vLLM CLI", allow_abbrev=False)
    top.add_argument("-v", "--version", action="version", version=__version__)
    commands = top.add_subparsers(required=False, dest="subparser")
    serve = commands.add_parser(
        "serve",
        help="Launch a local OpenAI-compatible API server to serve LLM completions via HTTP.",
        usage="vllm serve [model_tag] [options]",
        allow_abbrev=False,
    )
    serve.add_argument("--headless", action="store_true", default=False)
    return top, _add_arguments(serve)


def _normalise(argv: Sequence[str]) -> list[str]:
    # vLLM's FlexibleArgumentParser accepts --max_lora_rank as --max-lora-rank.
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            arg = key.replace("_", "-") + eq + value  # noqa: PLW2901 - rewritten on purpose
        out.append(arg)
    return out


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse like vLLM (exits 2 on errors); a positional model tag stands for --model."""
    args = parser.parse_args(_normalise(argv))
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    return args


def move_model_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``serve --model M ...`` -> ``serve M ...``, as vLLM rewrites it (with a warning)."""
    args = list(argv)
    if args[:1] != ["serve"]:
        return args, False
    for i, arg in enumerate(args):
        if arg == "--model" and i + 1 < len(args):
            return ["serve", args[i + 1], *args[1:i], *args[i + 2 :]], True
        if arg.startswith("--model="):
            return ["serve", arg.removeprefix("--model="), *args[1:i], *args[i + 1 :]], True
    return args, False


def non_default_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The dict vLLM logs as ``non-default args``, secrets shown as ``***``."""
    defaults = vars(parser.parse_args([]))
    changed = {k: getattr(args, k) for k, v in defaults.items() if getattr(args, k, v) != v}
    return {k: ("***" if k in _SENSITIVE else v) for k, v in changed.items()}
