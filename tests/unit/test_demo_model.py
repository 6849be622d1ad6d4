"""Tests of the tiny demo model generator (no vLLM needed; the e2e tests serve it)."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from niodoo_supervisor.demo import model as demo_model
from niodoo_supervisor.demo.model import (
    STAMP_NAME,
    DemoModel,
    generate,
)
from niodoo_supervisor.demo.safetensors import float32_to_bf16_bits
from niodoo_supervisor.demo.shape import SHAPE

REF = "tiny-base"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DemoModel:
    return generate(tmp_path_factory.mktemp("demo"), seed=0)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    """Parse the header independently of the writer; return (header, data section)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    assert isinstance(header, dict)
    return header, raw[8 + length :]


def bf16_tensor(path: Path, name: str) -> npt.NDArray[np.float32]:
    header, data = read_safetensors(path)
    begin, end = header[name]["data_offsets"]
    bits = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
    values: npt.NDArray[np.float32] = bits.view(np.float32).reshape(header[name]["shape"])
    return values


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def expected_base_shapes() -> dict[str, list[int]]:
    h, i, v = SHAPE.hidden_size, SHAPE.intermediate_size, SHAPE.vocab_size
    q, kv = SHAPE.num_heads * SHAPE.head_dim, SHAPE.num_kv_heads * SHAPE.head_dim
    shapes = {
        "model.embed_tokens.weight": [v, h],
        "model.norm.weight": [h],
        "lm_head.weight": [v, h],
    }
    for n in range(SHAPE.num_layers):
        p = f"model.layers.{n}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": [q, h],
            f"{p}.self_attn.q_proj.bias": [q],
            f"{p}.self_attn.k_proj.weight": [kv, h],
            f"{p}.self_attn.k_proj.bias": [kv],
            f"{p}.self_attn.v_proj.weight": [kv, h],
            f"{p}.self_attn.v_proj.bias": [kv],
            f"{p}.self_attn.o_proj.weight": [h, q],
            f"{p}.mlp.gate_proj.weight": [i, h],
            f"{p}.mlp.up_proj.weight": [i, h],
            f"{p}.mlp.down_proj.weight": [h, i],
            f"{p}.input_layernorm.weight": [h],
            f"{p}.post_attention_layernorm.weight": [h],
        }
    return shapes


# --- layout and determinism ----------------------------------------------------------------


def test_layout_names_every_directory(model: DemoModel) -> None:
    assert model.base == model.root / "base"
    assert set(model.adapters) == {"alpha", "beta", "wide"}
    for name, path in model.adapters.items():
        assert path == model.root / "adapters" / name
        assert (path / "adapter_config.json").is_file()
        assert (path / "adapter_model.safetensors").is_file()
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (model.base / name).is_file(), name


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=3, base_model_ref=REF)
    b = generate(tmp_path / "b", seed=3, base_model_ref=REF)
    files_a, files_b = file_bytes(a.root), file_bytes(b.root)
    assert len(files_a) == 13 + 8  # base 6, 3 adapters, 4 broken ones, the stamp
    assert files_a == files_b


def test_other_seed_changes_weights_but_not_tokenizer(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=0, base_model_ref=REF)
    b = generate(tmp_path / "b", seed=1, base_model_ref=REF)
    for rel in ("base/model.safetensors", "adapters/alpha/adapter_model.safetensors"):
        assert (a.root / rel).read_bytes() != (b.root / rel).read_bytes(), rel
    for rel in ("base/tokenizer.json", "base/config.json", "adapters/alpha/adapter_config.json"):
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel


def test_generated_files_hold_no_path_but_the_base_reference(tmp_path: Path) -> None:
    model = generate(tmp_path / "x", base_model_ref=REF)
    for rel, data in file_bytes(model.root).items():
        assert str(tmp_path).encode() not in data, rel


# --- stamp ---------------------------------------------------------------------------------


def test_second_generate_is_a_no_op(tmp_path: Path) -> None:
    generate(tmp_path, seed=0)
    weights = tmp_path / "base" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    generate(tmp_path, seed=0)
    assert weights.stat().st_mtime_ns == before


def test_force_regenerates(tmp_path: Path) -> None:
    generate(tmp_path, seed=0)
    weights = tmp_path / "base" / "model.safetensors"
    weights.write_bytes(b"stale")
    generate(tmp_path, seed=0, force=True)
    assert weights.read_bytes() != b"stale"


@pytest.mark.parametrize(
    "kwargs", [{"seed": 1}, {"seed": 0, "base_model_ref": "elsewhere"}], ids=["seed", "ref"]
)
def test_changed_inputs_regenerate(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    generate(tmp_path, seed=0)
    first = (tmp_path / "base" / "model.safetensors").read_bytes()
    first_cfg = (tmp_path / "adapters" / "alpha" / "adapter_config.json").read_bytes()
    generate(tmp_path, **kwargs)
    after = (tmp_path / "base" / "model.safetensors").read_bytes()
    after_cfg = (tmp_path / "adapters" / "alpha" / "adapter_config.json").read_bytes()
    assert (first, first_cfg) != (after, after_cfg)
    assert read_json(tmp_path / STAMP_NAME)["seed"] == kwargs["seed"]


@pytest.mark.parametrize("damage", ["delete", "edit"])
def test_damaged_output_is_regenerated(tmp_path: Path, damage: str) -> None:
    generate(tmp_path, seed=0)
    target = tmp_path / "adapters" / "beta" / "adapter_model.safetensors"
    original = target.read_bytes()
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(original[:-2] + b"\0\0")
    generate(tmp_path, seed=0)
    assert target.read_bytes() == original


def test_older_generator_version_is_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(tmp_path, seed=0)
    weights = tmp_path / "base" / "model.safetensors"
    weights.write_bytes(b"from an older generator")
    stamp = read_json(tmp_path / STAMP_NAME)
    # Make the stamp agree with the edited file, so only the version differs.
    monkeypatch.setattr(demo_model, "GENERATOR_VERSION", stamp["generator_version"] + 1)
    stamp["files"]["base/model.safetensors"] = demo_model._sha256(weights.read_bytes())
    (tmp_path / STAMP_NAME).write_text(json.dumps(stamp))
    generate(tmp_path, seed=0)
    assert weights.read_bytes() != b"from an older generator"


def test_stamp_records_inputs_and_every_file(model: DemoModel) -> None:
    stamp = read_json(model.stamp)
    assert stamp["generator_version"] == demo_model.GENERATOR_VERSION
    assert stamp["seed"] == 0
    assert stamp["base_model_name_or_path"] == str(model.base)
    on_disk = {rel for rel in file_bytes(model.root) if rel != STAMP_NAME}
    assert set(stamp["files"]) == on_disk


# --- base model ----------------------------------------------------------------------------


def test_config_describes_a_qwen2_the_cpu_build_can_run(model: DemoModel) -> None:
    config = read_json(model.base / "config.json")
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["num_hidden_layers"] == 2
    assert config["num_key_value_heads"] == 1
    tokenizer = Tokenizer.from_file(str(model.base / "tokenizer.json"))
    assert config["vocab_size"] == tokenizer.get_vocab_size() == 512
    assert config["eos_token_id"] == tokenizer.token_to_id("<|im_end|>")
    assert config["bos_token_id"] == tokenizer.token_to_id("<|endoftext|>")


def test_base_weights_have_qwen2_names_shapes_and_bf16(model: DemoModel) -> None:
    header, data = read_safetensors(model.base / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert {k: v["shape"] for k, v in header.items()} == expected_base_shapes()
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0
    assert spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    for v in header.values():
        begin, end = v["data_offsets"]
        assert end - begin == 2 * int(np.prod(v["shape"]))


def test_safetensors_library_reads_the_files(model: DemoModel) -> None:
    paths = [model.base / "model.safetensors"]
    paths += [p / "adapter_model.safetensors" for p in model.adapters.values()]
    for path in paths:
        header, _ = read_safetensors(path)
        with safe_open(str(path), framework="numpy") as f:
            assert set(f.keys()) == set(header) - {"__metadata__"}
            assert f.metadata() == {"format": "pt"}


def test_weights_are_small_random_and_norms_are_ones(model: DemoModel) -> None:
    path = model.base / "model.safetensors"
    assert np.all(bf16_tensor(path, "model.norm.weight") == 1.0)
    assert np.all(bf16_tensor(path, "model.layers.1.input_layernorm.weight") == 1.0)
    embed = bf16_tensor(path, "model.embed_tokens.weight")
    assert np.all(np.isfinite(embed))
    assert 0.015 < float(embed.std()) < 0.025
    assert abs(float(embed.mean())) < 0.002
    q = bf16_tensor(path, "model.layers.0.self_attn.q_proj.weight")
    assert not np.array_equal(q, bf16_tensor(path, "model.layers.1.self_attn.q_proj.weight"))


# --- tokenizer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The supervisor restarts the engine.",
        "  leading spaces\n\nand new lines\ttabs 12345",
        "accents: café, naïve; emoji: 🙂; CJK: 模型",
        "<|im_start|>user\nhi<|im_end|>\n",
    ],
)
def test_tokenizer_round_trips(model: DemoModel, text: str) -> None:
    tokenizer = Tokenizer.from_file(str(model.base / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    assert all(0 <= i < SHAPE.vocab_size for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_learned_merges_and_keeps_chatml_tokens_whole(model: DemoModel) -> None:
    tokenizer = Tokenizer.from_file(str(model.base / "tokenizer.json"))
    # A common corpus word is one token; it would be 10 bytes without merges.
    assert len(tokenizer.encode("supervisor").ids) < 4
    ids = tokenizer.encode("<|im_start|>assistant\n").ids
    assert ids[0] == tokenizer.token_to_id("<|im_start|>") == 1
    assert [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")] == [0, 2]


def test_tokenizer_config_is_chatml(model: DemoModel) -> None:
    config = read_json(model.base / "tokenizer_config.json")
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|endoftext|>"
    template = config["chat_template"]
    assert "<|im_start|>" in template
    assert "add_generation_prompt" in template
    decoder = config["added_tokens_decoder"]
    tokenizer = Tokenizer.from_file(str(model.base / "tokenizer.json"))
    for token_id, token in decoder.items():
        assert tokenizer.token_to_id(token["content"]) == int(token_id)
        assert token["special"] is True


def test_generation_config_stops_on_both_end_tokens(model: DemoModel) -> None:
    config = read_json(model.base / "generation_config.json")
    assert sorted(config["eos_token_id"]) == [0, 2]
    assert not {"temperature", "top_p", "top_k"} & set(config)


# --- adapters ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rank"), [("alpha", 8), ("beta", 16), ("wide", 64)])
def test_adapter_config(model: DemoModel, name: str, rank: int) -> None:
    config = read_json(model.adapters[name] / "adapter_config.json")
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["r"] == rank
    assert config["lora_alpha"] == 2 * rank
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["bias"] == "none"
    assert config["use_dora"] is False
    assert config["modules_to_save"] is None
    assert config["rank_pattern"] == {}
    assert config["base_model_name_or_path"] == str(model.base)


@pytest.mark.parametrize(("name", "rank"), [("alpha", 8), ("beta", 16), ("wide", 64)])
def test_adapter_weights_match_rank_and_base(model: DemoModel, name: str, rank: int) -> None:
    path = model.adapters[name] / "adapter_model.safetensors"
    header, _ = read_safetensors(path)
    header.pop("__metadata__")
    h = SHAPE.hidden_size
    out = {
        "q_proj": SHAPE.num_heads * SHAPE.head_dim,
        "v_proj": SHAPE.num_kv_heads * SHAPE.head_dim,
    }
    expected = {}
    for n in range(SHAPE.num_layers):
        for module, out_features in out.items():
            p = f"base_model.model.model.layers.{n}.self_attn.{module}"
            expected[f"{p}.lora_A.weight"] = [rank, h]
            expected[f"{p}.lora_B.weight"] = [out_features, rank]
    assert {k: v["shape"] for k, v in header.items()} == expected
    # lora_B must be non-zero, or the adapter would not change the model's output.
    lora_b = bf16_tensor(path, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")
    assert float(np.abs(lora_b).mean()) > 0.01


def test_adapters_differ_from_each_other(model: DemoModel) -> None:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    alpha = bf16_tensor(model.adapters["alpha"] / "adapter_model.safetensors", key)
    beta = bf16_tensor(model.adapters["beta"] / "adapter_model.safetensors", key)
    assert not np.array_equal(alpha, beta[: alpha.shape[0]])


def test_generated_adapters_are_those_of_the_brief(model: DemoModel) -> None:
    # What was written, not the table that says what to write: names on disk and their ranks.
    written = {
        path.name: read_json(path / "adapter_config.json")["r"]
        for path in (model.root / "adapters").iterdir()
    }
    assert written == {"alpha": 8, "beta": 16, "wide": 64}


def test_broken_adapters_are_broken_the_way_their_names_say(model: DemoModel) -> None:
    assert set(model.broken) == {"untrained", "prefixed", "misshapen", "stranger"}
    shapes = {}
    for name, path in model.broken.items():
        assert path == model.root / "broken-adapters" / name
        header, _ = read_safetensors(path / "adapter_model.safetensors")
        header.pop("__metadata__")
        shapes[name] = {k: v["shape"] for k, v in header.items()}
    h = SHAPE.hidden_size
    good = "base_model.model.model.layers.0.self_attn.q_proj"
    # untrained: the usual modules and shapes, lora_B exactly zero
    assert shapes["untrained"][f"{good}.lora_A.weight"] == [8, h]
    lora_b = bf16_tensor(
        model.broken["untrained"] / "adapter_model.safetensors", f"{good}.lora_B.weight"
    )
    assert not np.any(lora_b)
    # prefixed: tensors and target_modules under language_model.
    assert all(
        k.startswith("base_model.model.language_model.model.layers.") for k in shapes["prefixed"]
    )
    targets = read_json(model.broken["prefixed"] / "adapter_config.json")["target_modules"]
    assert "language_model.model.layers.0.self_attn.q_proj" in targets
    # misshapen: lora_A half as wide as the layer it targets
    assert shapes["misshapen"][f"{good}.lora_A.weight"] == [8, h // 2]
    # stranger: w_proj only
    assert {k.split(".")[-3] for k in shapes["stranger"]} == {"w_proj"}
    assert read_json(model.broken["stranger"] / "adapter_config.json")["target_modules"] == [
        "w_proj"
    ]


# --- bf16 ----------------------------------------------------------------------------------


def test_bf16_rounds_to_nearest_even() -> None:
    bits = np.array(
        [
            0x3F800000,  # 1.0: exact
            0x3F808000,  # halfway, lower half even: stays 0x3F80
            0x3F818000,  # halfway, lower half odd: rounds up to 0x3F82
            0x3F808001,  # just above halfway: rounds up
            0xBF80FFFF,  # negative: rounds away in magnitude
            0x7F7FFFFF,  # largest float32 overflows to +inf, as in torch
        ],
        dtype=np.uint32,
    )
    got = float32_to_bf16_bits(bits.view(np.float32))
    assert got.dtype == np.uint16
    assert got.tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF81, 0x7F80]


def test_bf16_round_trip_error_is_within_half_an_ulp() -> None:
    values = np.random.default_rng(0).standard_normal(1000, dtype=np.float32)
    back = (float32_to_bf16_bits(values).astype(np.uint32) << 16).view(np.float32)
    # bfloat16 keeps 8 significant bits: rounding costs at most half an ulp, 2**-8 relative.
    assert np.all(np.abs(back - values) <= np.abs(values) * 2.0**-8)
    assert np.max(np.abs(back - values) / np.abs(values)) > 2.0**-12
