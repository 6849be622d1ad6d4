"""PEFT features in `adapter_config.json` that vLLM does not apply, per vLLM version.

vLLM reads an adapter's config only when it loads the adapter: after the whole model load for
`--lora-modules`, so a refusal there costs minutes on a GPU box. What vLLM ignores without a
word is worse: the adapter serves, with outputs that are not the trained ones.

| feature                                   | 0.32, 0.33 (vllm/lora/peft_helper.py)   |
|-------------------------------------------|-----------------------------------------|
| use_dora                                  | refused: "vLLM does not yet support DoRA." |
| modules_to_save other than classifier/score | refused                               |
| bias other than "none"                    | refused: "Adapter bias is not supported." |
| lora_bias                                 | refused                                 |
| init_lora_weights pissa/olora/corda/loftq | refused (they change the base weights)  |
| alora_invocation_tokens, layer_replication, use_bdlora, use_qalora | refused       |
| layers_to_transform / layers_pattern      | no problem: only those layers' tensors are saved, vLLM applies exactly what the file holds |
| use_rslora, rank_pattern, alpha_pattern   | applied                                 |
| embed_tokens / lm_head targets            | per model class (`embedding_lora_modules`) |

Versions before 0.32 were not read for lora_bias, init_lora_weights and the rest of that
list: a warning there (such an adapter may load and serve outputs that differ from PEFT's).
DoRA, modules_to_save and bias are errors on every version (older peft_helper.py copies
refuse them too; bias only without --enable-lora-bias, a flag removed in 0.12).
0.33 is taken as 0.32: a newer copy of peft_helper.py has the same list of refusals. The
embedding table was read for 0.32 only: on other versions an embedding target is a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from niodoo_supervisor.config.versions import Version

__all__ = ["FeatureProblem", "embedding_lora_modules", "feature_problems"]

_REFUSES_ALL_FROM = Version(0, 32, 0)
_CLASSIFIER_HEADS = ("classifier", "score")
# PEFT inits that only set the first weights; the saved adapter is a plain LoRA (vLLM 0.32's list).
_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")

# Which embedding modules vLLM 0.32.0 applies a LoRA to, per config.json architecture. Read from
# its source: vllm/lora/utils.py's get_supported_lora_modules adds the keys of a model class's
# `embedding_modules` to the linear layers' names; SupportsLoRA's default is {} and a subclass
# inherits its base's (MistralForCausalLM sets {} again over LlamaForCausalLM's). Each
# architecture of model_executor/models/registry.py's _TEXT_GENERATION_MODELS was followed to its
# class and up its bases. Not read: multimodal wrappers (a wrapped language model's
# `embedding_modules` count too), the Transformers backend, classes without LoRA, other versions.
_BOTH = frozenset({"embed_tokens", "lm_head"})
_EMBEDDING_LORA_0_32: Mapping[str, frozenset[str]] = {
    **dict.fromkeys(
        (
            "ApertusForCausalLM",
            "DeciLMForCausalLM",
            "Ernie4_5ForCausalLM",
            "Exaone4ForCausalLM",
            "ExaoneMoEForCausalLM",
            "ExaoneMoeForCausalLM",
            "FalconH1ForCausalLM",
            "GraniteForCausalLM",
            "GraniteMoeForCausalLM",
            "GraniteMoeHybridForCausalLM",
            "GraniteMoeSWAForCausalLM",
            "GraniteMoeSharedForCausalLM",
            "GraniteSWAForCausalLM",
            "HyperCLOVAXForCausalLM",
            "IQuestCoderForCausalLM",
            "InternLM3ForCausalLM",
            "JambaForCausalLM",
            "K2HorizonForCausalLM",
            "LLaMAForCausalLM",
            "Lfm2ForCausalLM",
            "Lfm2MoeForCausalLM",
            "Llama4ForCausalLM",
            "LlamaForCausalLM",
            "MiniCPM3ForCausalLM",
            "MiniCPMForCausalLM",
            "MixtralForCausalLM",
            "NemotronForCausalLM",
            "NemotronHForCausalLM",
            "NemotronHPuzzleForCausalLM",
            "Param2MoEForCausalLM",
            "Phi3ForCausalLM",
            "PhiMoEForCausalLM",
            "Qwen3ForCausalLM",
            "Qwen3MoeForCausalLM",
            "Qwen3_5ForCausalLM",
            "Qwen3_5MoeForCausalLM",
            "SolarForCausalLM",
            "TeleChat2ForCausalLM",
            "TeleChat3ForCausalLM",
            "TeleFLMForCausalLM",
        ),
        _BOTH,
    ),
    "CohereForCausalLM": frozenset({"embed_tokens"}),
    "Cohere2ForCausalLM": frozenset({"embed_tokens"}),
    "ExaoneForCausalLM": frozenset({"wte", "lm_head"}),
}
_NO_EMBEDDING_LORA_0_32 = frozenset(
    {
        "AXK1ForCausalLM",
        "AfmoeForCausalLM",
        "BailingMoeForCausalLM",
        "BailingMoeV2ForCausalLM",
        "ChatGLMForConditionalGeneration",
        "ChatGLMModel",
        "DeepseekForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "Ernie4_5_MoeForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma4ForCausalLM",
        "GemmaForCausalLM",
        "Glm4ForCausalLM",
        "Glm4MoeForCausalLM",
        "Glm4MoeLiteForCausalLM",
        "GptOssForCausalLM",
        "HYV3ForCausalLM",
        "InternLM2ForCausalLM",
        "LagunaForCausalLM",
        "LongcatFlashForCausalLM",
        "LongcatFlashNgramForCausalLM",
        "MiMoForCausalLM",
        "MiniMaxM2ForCausalLM",
        "Ministral3ForCausalLM",
        "MistralForCausalLM",
        "MistralLarge3ForCausalLM",
        "MuseGlimmerForCausalLM",
        "OPTForCausalLM",
        "OlmoHybridForCausalLM",
        "OlmoeForCausalLM",
        "PanguEmbeddedForCausalLM",
        "PanguProMoEV2ForCausalLM",
        "PanguUltraMoEForCausalLM",
        "Plamo3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3NextForCausalLM",
        "Rnj1ForCausalLM",
        "SarvamMLAForCausalLM",
        "SarvamMoEForCausalLM",
    }
)


@dataclass(frozen=True)
class FeatureProblem:
    error: bool
    message: str


def feature_problems(config: Mapping[str, Any], version: Version | None) -> list[FeatureProblem]:
    """What vLLM `version` (None: unknown, taken as the newest) would make of the features."""
    problems: list[FeatureProblem] = []
    late = (
        "vLLM refuses the adapter when it loads it (for --lora-modules: after the whole model load)"
    )

    def refused(what: str) -> None:
        problems.append(FeatureProblem(True, f"{what}: {late}"))

    if config.get("use_dora"):
        refused("use_dora is true (a DoRA adapter)")
    saved = config.get("modules_to_save")
    if isinstance(saved, list):
        others = [str(name) for name in saved if name not in _CLASSIFIER_HEADS]
        if others:
            refused(f"modules_to_save lists {', '.join(others[:3])} (full weights of base modules)")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        refused(f"bias is {bias!r} (trained biases)")
    newer: list[str] = []
    if config.get("lora_bias"):
        newer.append("lora_bias is true")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        newer.append(f"init_lora_weights is {init!r} (it changes the base model's weights)")
    for key in ("alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora"):
        if config.get(key):
            newer.append(f"{key} is set")
    for what in newer:
        if version is None or version >= _REFUSES_ALL_FROM:
            refused(what)
        else:
            problems.append(
                FeatureProblem(
                    False,
                    f"{what}: vLLM {_REFUSES_ALL_FROM} refuses it; an older vLLM may load "
                    "it without a word and serve outputs that differ from the trained adapter's",
                )
            )
    return problems


def embedding_lora_modules(architecture: str, version: Version | None) -> frozenset[str] | None:
    """The embedding modules (`embed_tokens`, `lm_head`) vLLM `version` (None: unknown, taken
    as 0.32) applies a LoRA to on `architecture`; None when that was not verified."""
    if version is not None and (version.major, version.minor) != (0, 32):
        return None
    if architecture in _NO_EMBEDDING_LORA_0_32:
        return frozenset()
    return _EMBEDDING_LORA_0_32.get(architecture)
