"""The demo model's PEFT LoRA adapters: which are written (`ADAPTERS`, and the
`BROKEN_ADAPTERS` the adapter checks must catch), their tensors and their
adapter_config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from niodoo_supervisor.demo.shape import SHAPE, ModelShape, normal, seeded_rng

__all__ = [
    "ADAPTERS",
    "BROKEN_ADAPTERS",
    "LORA_B_STD",
    "AdapterSpec",
    "adapter_config",
    "adapter_weights",
]


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter to generate."""

    name: str
    rank: int
    alpha: int
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    # Where the tensors sit; `target_modules` in adapter_config.json name full module paths
    # (with this prefix, less PEFT's `base_model.model.`) when it is not the default.
    layers_prefix: str = "base_model.model.model.layers"
    zero_b: bool = False  # lora_B all zeros: what PEFT writes for an untrained adapter
    a_in_features: int | None = None  # lora_A's width; None: the base layer's (hidden size)


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("alpha", rank=8, alpha=16),
    AdapterSpec("beta", rank=16, alpha=32),
    # Above vLLM's default --max-lora-rank of 16, for the negative tests.
    AdapterSpec("wide", rank=64, alpha=128),
)

# Adapters that must be caught: by `check` (prefixed, misshapen, stranger) or only by the
# effect probe once vLLM serves them (untrained). Written under broken-adapters/.
BROKEN_ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("untrained", rank=8, alpha=16, zero_b=True),
    AdapterSpec(
        "prefixed", rank=8, alpha=16, layers_prefix="base_model.model.language_model.model.layers"
    ),
    AdapterSpec("misshapen", rank=8, alpha=16, a_in_features=64),
    AdapterSpec("stranger", rank=8, alpha=16, target_modules=("w_proj",)),
)
_DEFAULT_PREFIX = "base_model.model.model.layers"

# lora_A ~ N(0, 1/in) keeps A @ x at unit scale; lora_B this large makes the adapters visibly
# change greedy outputs (PEFT would start B at zero, which would make them no-ops).
LORA_B_STD = 0.05


def _target_out_features(shape: ModelShape, module: str) -> int:
    # w_proj exists in no Qwen2 model (the "stranger" adapter): any width will do.
    outs = {"q_proj": shape.q_out, "k_proj": shape.kv_out, "v_proj": shape.kv_out}
    return outs.get(module, shape.hidden_size)


def adapter_weights(
    shape: ModelShape, spec: AdapterSpec, seed: int
) -> dict[str, npt.NDArray[np.float32]]:
    """PEFT's key names: lora_A is [r, in], lora_B is [out, r]."""
    rng = seeded_rng(seed, f"adapter:{spec.name}")
    h = shape.hidden_size
    width = spec.a_in_features or h
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for i in range(shape.num_layers):
        for module in spec.target_modules:
            p = f"{spec.layers_prefix}.{i}.self_attn.{module}"
            out = _target_out_features(shape, module)
            tensors[f"{p}.lora_A.weight"] = normal(rng, (spec.rank, width), width**-0.5)
            lora_b = normal(rng, (out, spec.rank), LORA_B_STD)
            if spec.zero_b:
                lora_b[:] = 0.0
            tensors[f"{p}.lora_B.weight"] = lora_b
    return tensors


def _config_targets(shape: ModelShape, spec: AdapterSpec) -> list[str]:
    """adapter_config.json's `target_modules`: short names, or full module paths under a
    non-default prefix (as PEFT writes for a model wrapped in `language_model.`)."""
    if spec.layers_prefix == _DEFAULT_PREFIX:
        return list(spec.target_modules)
    inner = spec.layers_prefix.removeprefix("base_model.model.")
    return [
        f"{inner}.{i}.self_attn.{module}"
        for i in range(shape.num_layers)
        for module in spec.target_modules
    ]


def adapter_config(spec: AdapterSpec, base_ref: str) -> dict[str, Any]:
    # The fields PEFT writes for a plain LoRA; vLLM rejects DoRA, LoRA bias, modules_to_save.
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_ref,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": spec.rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": _config_targets(SHAPE, spec),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
