"""The adapter fit check: an adapter against the base checkpoint's headers, as vLLM 0.32 would
match them (module paths, LoRA-capable names, lora.target_modules, shapes, PEFT features).

The demo model's broken adapters are the cases vLLM gets wrong: `prefixed` loads and does
nothing, `stranger` is refused after the whole model load, `misshapen` does not fit. `untrained`
fits by every static measure (only the effect probe sees it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.demo.model import DemoModel, generate
from niodoo_supervisor.demo.shape import SHAPE
from niodoo_supervisor.launch.adapter_fit import FitProblem, adapter_fit
from niodoo_supervisor.launch.adapters import read_adapter
from niodoo_supervisor.launch.checkpoint_headers import (
    BaseCheckpoint,
    read_base_checkpoint,
    read_safetensors_header,
)
from safetensors_headers import write_safetensors_header


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoModel:
    return generate(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def base(demo: DemoModel) -> BaseCheckpoint:
    checkpoint = read_base_checkpoint(demo.base)
    assert checkpoint is not None
    return checkpoint


def _fit(
    adapter: Path,
    base: BaseCheckpoint,
    version: Version | None = None,
    targets: list[str] | None = None,
) -> list[FitProblem]:
    info = read_adapter(adapter)
    return adapter_fit(
        adapter, info.config, base, vllm_version=version, lora_target_modules=targets
    )


def _copy(adapter: Path, to: Path, **config_changes: Any) -> Path:
    shutil.copytree(adapter, to)
    config_file = to / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(config_changes)
    config_file.write_text(json.dumps(config))
    return to


def _only_error(problems: list[FitProblem]) -> str:
    assert [problem.error for problem in problems] == [True], problems
    return problems[0].message


# --- the demo model's adapters ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpha", "beta", "wide"])
def test_the_good_adapters_fit(demo: DemoModel, base: BaseCheckpoint, name: str) -> None:
    assert _fit(demo.adapters[name], base) == []


def test_untrained_fits_statically_only_the_effect_probe_sees_it(
    demo: DemoModel, base: BaseCheckpoint
) -> None:
    assert _fit(demo.broken["untrained"], base) == []


def test_prefixed_names_what_the_base_has_and_the_silent_base_output(
    demo: DemoModel, base: BaseCheckpoint
) -> None:
    message = _only_error(_fit(demo.broken["prefixed"], base))
    assert message == (
        "4 of its 4 modules exist nowhere in the base model "
        "(language_model.model.layers.0.self_attn.q_proj, "
        "language_model.model.layers.0.self_attn.v_proj, "
        "language_model.model.layers.1.self_attn.q_proj and 1 more); the base has "
        "model.layers.0.self_attn.q_proj (without the `language_model.` prefix): vLLM loads "
        "it and would silently serve base-model output"
    )


def test_misshapen_names_the_tensor_its_shape_and_the_expected_one(
    demo: DemoModel, base: BaseCheckpoint
) -> None:
    message = _only_error(_fit(demo.broken["misshapen"], base))
    assert message.startswith("4 LoRA tensor shape(s) do not fit the base layers: ")
    assert (
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight is [8, 64], "
        "expected [8, 128]" in message
    )
    assert "and 1 more" in message


def test_stranger_is_refused_late_by_vllm_and_the_check_says_what_the_base_has(
    demo: DemoModel, base: BaseCheckpoint
) -> None:
    message = _only_error(_fit(demo.broken["stranger"], base))
    assert message.startswith(
        "targets modules the base model does not have (model.layers.0.self_attn.w_proj, "
        "model.layers.1.self_attn.w_proj); the base's LoRA-capable modules are down_proj, "
        "gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj: vLLM refuses the adapter only "
        "when it loads it (for --lora-modules: after the whole model load)"
    )
    assert "expected target modules in" in message


# --- lora.target_modules (--lora-target-modules, vllm#55193) -----------------------------------


def test_target_modules_leaving_out_every_module_is_an_error(
    demo: DemoModel, base: BaseCheckpoint
) -> None:
    message = _only_error(_fit(demo.adapters["alpha"], base, targets=["o_proj", "down_proj"]))
    assert message.startswith("lora.target_modules (o_proj, down_proj) leaves out every one")
    assert "would silently serve base-model output (vllm#55193)" in message


def test_target_modules_leaving_out_some_modules_is_a_warning(
    demo: DemoModel, base: BaseCheckpoint, tmp_path: Path
) -> None:
    problems = _fit(demo.adapters["alpha"], base, targets=["model.layers.0.self_attn.qkv_proj"])
    assert [problem.error for problem in problems] == [False]
    assert "leaves out 2 of its modules (model.layers.1.self_attn.q_proj" in problems[0].message


@pytest.mark.parametrize("targets", [["q_proj"], ["qkv_proj"], ["k_proj"], ["v_proj", "x"]])
def test_a_target_of_a_packed_layer_covers_its_parts(
    demo: DemoModel, base: BaseCheckpoint, targets: list[str]
) -> None:
    # vLLM wraps qkv_proj as one layer when any of q/k/v_proj (or qkv_proj) is targeted.
    assert _fit(demo.adapters["alpha"], base, targets=targets) == []


# --- ranks and stray tensors --------------------------------------------------------------------


def test_tensor_rank_other_than_the_config_s_r_is_an_error(
    demo: DemoModel, base: BaseCheckpoint, tmp_path: Path
) -> None:
    adapter = _copy(demo.adapters["alpha"], tmp_path / "a", r=16)
    message = _only_error(_fit(adapter, base))
    assert "model.layers.0.self_attn.q_proj has rank 8, adapter_config.json says 16" in message


def test_rank_pattern_is_matched_as_peft_does(
    demo: DemoModel, base: BaseCheckpoint, tmp_path: Path
) -> None:
    adapter = _copy(demo.adapters["alpha"], tmp_path / "a", r=4, rank_pattern={"q_proj": 8})
    message = _only_error(_fit(adapter, base))
    assert "v_proj has rank 8, adapter_config.json says 4" in message
    assert "q_proj has rank" not in message
    regex = _copy(demo.adapters["alpha"], tmp_path / "b", r=4, rank_pattern={"(a+)+$": 8})
    assert _fit(regex, base) == []  # a regular expression is not run, the rank not compared


def test_tensors_vllm_cannot_read_are_an_error(base: BaseCheckpoint, tmp_path: Path) -> None:
    adapter = tmp_path / "dora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    write_safetensors_header(
        adapter / "adapter_model.safetensors",
        {
            f"{prefix}.lora_A.weight": ("F32", [8, 128]),
            f"{prefix}.lora_B.weight": ("F32", [128, 8]),
            f"{prefix}.lora_magnitude_vector": ("F32", [128]),
        },
    )
    message = _only_error(_fit(adapter, base))
    assert message.startswith(f"{prefix}.lora_magnitude_vector are no LoRA weights vLLM")


# --- PEFT features, per vLLM version ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"use_dora": True}, "use_dora is true (a DoRA adapter): vLLM refuses the adapter"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save lists lm_head"),
        ({"bias": "all"}, "bias is 'all' (trained biases): vLLM refuses"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights is 'pissa'"),
        ({"lora_bias": True}, "lora_bias is true: vLLM refuses"),
    ],
)
def test_features_vllm_0_32_refuses_are_errors(
    demo: DemoModel,
    base: BaseCheckpoint,
    tmp_path: Path,
    changes: Mapping[str, Any],
    said: str,
) -> None:
    adapter = _copy(demo.adapters["alpha"], tmp_path / "a", **changes)
    assert said in _only_error(_fit(adapter, base, Version(0, 32, 0)))


def test_features_older_vllm_ignores_are_warnings(
    demo: DemoModel, base: BaseCheckpoint, tmp_path: Path
) -> None:
    adapter = _copy(demo.adapters["alpha"], tmp_path / "a", init_lora_weights="pissa")
    [problem] = _fit(adapter, base, Version(0, 31, 0))
    assert not problem.error
    assert "vLLM 0.32.0 refuses it; an older vLLM may load it without a word" in problem.message


@pytest.mark.parametrize(
    "changes",
    [
        {"modules_to_save": ["score"]},
        {"layers_to_transform": [0], "layers_pattern": "layers"},
        {"init_lora_weights": "gaussian", "use_rslora": True},
    ],
)
def test_features_vllm_applies_pass(
    demo: DemoModel, base: BaseCheckpoint, tmp_path: Path, changes: Mapping[str, Any]
) -> None:
    adapter = _copy(demo.adapters["alpha"], tmp_path / "a", **changes)
    assert _fit(adapter, base, Version(0, 32, 0)) == []


def _embedding_adapter(tmp_path: Path, module: str) -> Path:
    """A LoRA on `lm_head` (linear: A [r, hidden], B [vocab, r]) or `embed_tokens` (PEFT's
    lora_embedding_A [r, vocab], lora_embedding_B [hidden, r])."""
    adapter = tmp_path / module
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "target_modules": [module]})
    )
    h, vocab = SHAPE.hidden_size, SHAPE.vocab_size
    if module == "lm_head":
        tensors = {
            "base_model.model.lm_head.lora_A.weight": ("F32", [8, h]),
            "base_model.model.lm_head.lora_B.weight": ("F32", [vocab, 8]),
        }
    else:
        tensors = {
            "base_model.model.model.embed_tokens.lora_embedding_A": ("F32", [8, vocab]),
            "base_model.model.model.embed_tokens.lora_embedding_B": ("F32", [h, 8]),
        }
    write_safetensors_header(adapter / "adapter_model.safetensors", tensors)
    return adapter


def _as(base: BaseCheckpoint, architecture: str) -> BaseCheckpoint:
    return BaseCheckpoint(base.path, {**base.config, "architectures": [architecture]}, base.tensors)


def test_an_lm_head_target_is_refused_late_on_a_model_class_without_embedding_loras(
    base: BaseCheckpoint, tmp_path: Path
) -> None:
    message = _only_error(_fit(_embedding_adapter(tmp_path, "lm_head"), base))
    assert message.startswith(
        "targets lm_head, which vLLM does not apply a LoRA to for Qwen2ForCausalLM"
    )
    assert "after the whole model load" in message


# vLLM 0.32's LlamaForCausalLM declares embedding_modules and its subclasses inherit them
# (Phi3ForCausalLM, InternLM3 and IQuestCoder through the registry); MistralForCausalLM sets {}.
@pytest.mark.parametrize(
    "architecture",
    [
        "LlamaForCausalLM",
        "Phi3ForCausalLM",
        "InternLM3ForCausalLM",
        "GraniteForCausalLM",
        "Qwen3ForCausalLM",
        "MixtralForCausalLM",
        "Lfm2ForCausalLM",
    ],
)
@pytest.mark.parametrize("module", ["lm_head", "embed_tokens"])
def test_embedding_targets_fit_the_model_classes_vllm_0_32_gives_embedding_loras(
    base: BaseCheckpoint, tmp_path: Path, architecture: str, module: str
) -> None:
    adapter = _embedding_adapter(tmp_path, module)
    assert _fit(adapter, _as(base, architecture), Version(0, 32, 0)) == []


@pytest.mark.parametrize(
    "architecture",
    ["Qwen2ForCausalLM", "MistralForCausalLM", "GemmaForCausalLM", "CohereForCausalLM"],
)
def test_an_lm_head_target_is_refused_where_vllm_0_32_has_no_lm_head_lora(
    base: BaseCheckpoint, tmp_path: Path, architecture: str
) -> None:
    message = _only_error(
        _fit(_embedding_adapter(tmp_path, "lm_head"), _as(base, architecture), Version(0, 32, 0))
    )
    assert message.startswith(
        f"targets lm_head, which vLLM does not apply a LoRA to for {architecture}"
    )


def test_cohere_takes_an_embed_tokens_lora_but_not_an_lm_head_one(
    base: BaseCheckpoint, tmp_path: Path
) -> None:
    adapter = _embedding_adapter(tmp_path, "embed_tokens")
    assert _fit(adapter, _as(base, "CohereForCausalLM"), Version(0, 32, 0)) == []


def test_an_embedding_target_on_a_class_the_table_does_not_know_is_a_warning(
    base: BaseCheckpoint, tmp_path: Path
) -> None:
    problems = _fit(_embedding_adapter(tmp_path, "lm_head"), _as(base, "BrandNewForCausalLM"))
    assert [problem.error for problem in problems] == [False], problems
    assert problems[0].message.startswith(
        "targets lm_head: a LoRA on embeddings is not verified for BrandNewForCausalLM"
    )


@pytest.mark.parametrize("version", [Version(0, 11, 0), Version(0, 33, 0)])
def test_an_embedding_target_on_a_vllm_other_than_0_32_is_a_warning(
    base: BaseCheckpoint, tmp_path: Path, version: Version
) -> None:
    problems = _fit(_embedding_adapter(tmp_path, "lm_head"), base, version)
    assert [problem.error for problem in problems] == [False], problems
    assert "not verified for Qwen2ForCausalLM" in problems[0].message


# --- quantized and sharded bases ----------------------------------------------------------------


def _awq_base(root: Path) -> Path:
    """A Qwen2-shaped AWQ checkpoint's headers: packed qweight [in, out/8], qzeros, scales."""
    root.mkdir()
    h, kv_out, inter = SHAPE.hidden_size, SHAPE.kv_out, SHAPE.intermediate_size
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": h,
        "intermediate_size": inter,
        "num_attention_heads": SHAPE.num_heads,
        "num_key_value_heads": SHAPE.num_kv_heads,
        "vocab_size": SHAPE.vocab_size,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64},
    }
    (root / "config.json").write_text(json.dumps(config))
    tensors: dict[str, tuple[str, list[int]]] = {
        "model.embed_tokens.weight": ("F16", [SHAPE.vocab_size, h])
    }
    for i in range(SHAPE.num_layers):
        for module, width, out in [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, kv_out),
            ("self_attn.v_proj", h, kv_out),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", h, inter),
            ("mlp.up_proj", h, inter),
            ("mlp.down_proj", inter, h),
        ]:
            p = f"model.layers.{i}.{module}"
            tensors[f"{p}.qweight"] = ("I32", [width, out // 8])
            tensors[f"{p}.qzeros"] = ("I32", [width // 64, out // 8])
            tensors[f"{p}.scales"] = ("F16", [width // 64, out])
    tensors["lm_head.weight"] = ("F16", [SHAPE.vocab_size, h])
    write_safetensors_header(root / "model.safetensors", tensors)
    return root


def test_an_awq_base_takes_in_and_out_features_from_config_json(
    demo: DemoModel, tmp_path: Path
) -> None:
    awq = read_base_checkpoint(_awq_base(tmp_path / "awq"))
    assert awq is not None and awq.quant_method == "awq"
    assert _fit(demo.adapters["alpha"], awq) == []
    assert _fit(demo.broken["untrained"], awq) == []
    message = _only_error(_fit(demo.broken["misshapen"], awq))
    assert message.startswith(
        "4 LoRA tensor shape(s) do not fit the base layers (in/out of quantized layers from "
        "config.json): base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight is "
        "[8, 64], expected [8, 128]"
    )
    assert "exist nowhere" in _only_error(_fit(demo.broken["prefixed"], awq))
    assert "w_proj" in _only_error(_fit(demo.broken["stranger"], awq))


def test_an_index_sharded_base_is_read_shard_by_shard(demo: DemoModel, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(demo.base / "config.json", sharded / "config.json")
    tensors = read_safetensors_header(demo.base / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2]}
    shards["model-00002-of-00002.safetensors"] = names[1::2]
    weight_map: dict[str, str] = {}
    for shard, members in shards.items():
        write_safetensors_header(
            sharded / shard,
            {name: (tensors[name].dtype, list(tensors[name].shape)) for name in members},
        )
        weight_map |= dict.fromkeys(members, shard)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    checkpoint = read_base_checkpoint(sharded)
    assert checkpoint is not None and dict(checkpoint.tensors) == tensors
    assert _fit(demo.adapters["beta"], checkpoint) == []
    assert "exist nowhere" in _only_error(_fit(demo.broken["prefixed"], checkpoint))


def test_a_base_without_safetensors_is_not_compared(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    assert read_base_checkpoint(tmp_path) is None


def test_on_a_wrapper_model_a_path_the_base_lacks_is_a_warning(
    demo: DemoModel, base: BaseCheckpoint
) -> None:
    # Qwen2-VL-like classes rename checkpoint paths (hf_to_vllm_mapper) for the adapter too.
    wrapper = BaseCheckpoint(
        base.path,
        {**base.config, "architectures": ["Qwen2VLForConditionalGeneration"], "vision_config": {}},
        base.tensors,
    )
    [problem] = _fit(demo.broken["prefixed"], wrapper)
    assert not problem.error
    assert "unless vLLM's renaming for Qwen2VLForConditionalGeneration maps them" in problem.message


def test_hostile_tensor_names_give_a_short_message_quickly(
    base: BaseCheckpoint, tmp_path: Path
) -> None:
    adapter = tmp_path / "long"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    name = "base_model.model." + "a." * 500_000 + "q_proj"
    write_safetensors_header(
        adapter / "adapter_model.safetensors",
        {f"{name}.lora_A.weight": ("F32", [8, 128]), f"{name}.lora_B.weight": ("F32", [128, 8])},
    )
    message = _only_error(_fit(adapter, base))
    assert len(message) < 1000 and "exist nowhere in the base model (a.a.a." in message
