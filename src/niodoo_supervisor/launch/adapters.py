"""Reading PEFT LoRA adapters from disk: rank, base model, and what vLLM will think of them.

vLLM reads an adapter only after it has loaded the whole model (seconds on a tiny model,
minutes for a 7B on a GPU) and then dies on a rank above --max-lora-rank. Reading
`adapter_config.json` first costs a millisecond.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.vllm_options import LORA_RANKS
from niodoo_supervisor.files.inputs import (
    InputFileError,
    is_dir,
    is_file,
    json_object,
    read_text_file,
)

__all__ = [
    "AdapterInfo",
    "AdapterReadError",
    "read_adapter",
    "same_base_model",
    "smallest_rank_at_least",
]


# PEFT writes about 1 KB; a rank_pattern for every module of a large model stays far below.
MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024


class AdapterReadError(Exception):
    """The adapter directory cannot be used; the message names the fix."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    rank: int  # the largest of `r` and every `rank_pattern` value
    peft_type: str
    base_model: str | None
    config: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def read_adapter(path: Path) -> AdapterInfo:
    if not is_dir(path):
        raise AdapterReadError(f"{path} is not a directory; give the adapter's folder")
    config_file = path / "adapter_config.json"
    try:
        raw = json_object(read_text_file(config_file, MAX_ADAPTER_CONFIG_BYTES), str(config_file))
    except InputFileError as exc:
        if exc.missing:
            raise AdapterReadError(
                f"{config_file} is missing; is this a PEFT adapter folder?"
            ) from None
        raise AdapterReadError(f"{exc}; {exc.fix}" if exc.fix else str(exc)) from None
    except ValueError as exc:
        raise AdapterReadError(str(exc)) from None
    peft_type = str(raw.get("peft_type", ""))
    if peft_type.upper() != "LORA":
        raise AdapterReadError(
            f"{config_file}: peft_type is {peft_type or 'missing'!r}, vLLM serves only LORA adapters"
        )
    ranks = [raw.get("r")]
    pattern = raw.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise AdapterReadError(f"{config_file}: rank_pattern must be an object")
    ranks.extend(pattern.values())
    valid = [
        rank for rank in ranks if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0
    ]
    if len(valid) != len(ranks):
        raise AdapterReadError(
            f"{config_file}: r and rank_pattern values must be positive integers, got {ranks}"
        )
    has_weights = any(
        is_file(path / name) for name in ("adapter_model.safetensors", "adapter_model.bin")
    )
    if not has_weights:
        raise AdapterReadError(f"{path} has no adapter_model.safetensors (or .bin)")
    base = raw.get("base_model_name_or_path")
    return AdapterInfo(path, max(valid), peft_type, str(base) if base else None, raw)


def smallest_rank_at_least(rank: int, allowed: tuple[int, ...] = LORA_RANKS) -> int | None:
    return next((choice for choice in allowed if choice >= rank), None)


# Quantized exports keep the base model's name with a suffix; adapters are usually trained on
# the unquantized base and serve fine on them.
_QUANT_SUFFIX = re.compile(
    r"[-_.](awq|gptq(-int[48])?|int[48]|fp8|bnb(-4bit)?|gguf|4bit|8bit)$", re.IGNORECASE
)


def _model_stem(name: str) -> str:
    stem = name.rstrip("/").rsplit("/", 1)[-1].lower()
    previous = None
    while previous != stem:
        previous, stem = stem, _QUANT_SUFFIX.sub("", stem)
    return stem


def same_base_model(adapter_base: str, served: str, model_path: str) -> bool | None:
    """True when the names agree (path or hub id, quantization suffix ignored), False when
    they clearly differ, None when there is nothing to compare."""
    if not adapter_base:
        return None
    candidates = {served, model_path}
    if adapter_base in candidates:
        return True
    adapter_path = Path(adapter_base)
    if adapter_path.is_absolute() and Path(model_path).is_absolute():
        try:
            if adapter_path.resolve() == Path(model_path).resolve():
                return True
        except OSError:
            return None
    stems = {_model_stem(candidate) for candidate in candidates if candidate}
    return _model_stem(adapter_base) in stems
