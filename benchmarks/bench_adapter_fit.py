"""How long does the adapter fit check take on a 7B checkpoint?

A Qwen2.5-7B-shaped checkpoint is generated: 28 layers, hidden 3584, intermediate 18944, 28
heads, 4 KV heads, vocab 152064, 339 tensors in 4 shards with model.safetensors.index.json,
BF16, about 15 GB of data left as holes in sparse files (real headers, zero-filled data that
is never written). Beside it, ADAPTERS rank-16 PEFT adapters on all seven projections (392
tensors each, also sparse). Timed, median of RUNS runs, interleaved round by round:

  (a) reading the base's headers alone (config.json, the index, 4 shard headers),
  (b) comparing one adapter with headers already read (its adapter_config.json and header),
  (c) what preflight adds for one adapter: (a) + (b),
  (d) what preflight adds for ADAPTERS adapters: the base read once, each adapter compared,
  (e) the alternative for scale: reading the base's tensor data once (a `cat` of every
      shard to /dev/null: for holes this is the page-cache copy, a lower bound of what any
      check that loads the weights pays).

Usage: python benchmarks/bench_adapter_fit.py [RUNS] [ADAPTERS]. Prints figures; asserts
only that the generated adapters fit (no problem found).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from niodoo_supervisor.launch.adapters import read_adapter
from niodoo_supervisor.launch.fit_checker import FitChecker

# The tests' writer of header-only (sparse) safetensors files: one writer for both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from safetensors_headers import write_safetensors_header

if len(sys.argv) > 3 or not all(arg.isdigit() for arg in sys.argv[1:]):
    sys.exit("usage: python benchmarks/bench_adapter_fit.py [RUNS] [ADAPTERS]")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
ADAPTERS = int(sys.argv[2]) if len(sys.argv) > 2 else 4

LAYERS, HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 28, 3584, 18944, 28, 4, 152064
HEAD_DIM = HIDDEN // HEADS
SHARDS = 4
RANK = 16
# (module, in, out) of every projection of one layer.
PROJECTIONS = [
    ("self_attn.q_proj", HIDDEN, HEADS * HEAD_DIM),
    ("self_attn.k_proj", HIDDEN, KV_HEADS * HEAD_DIM),
    ("self_attn.v_proj", HIDDEN, KV_HEADS * HEAD_DIM),
    ("self_attn.o_proj", HEADS * HEAD_DIM, HIDDEN),
    ("mlp.gate_proj", HIDDEN, INTER),
    ("mlp.up_proj", HIDDEN, INTER),
    ("mlp.down_proj", INTER, HIDDEN),
]


def _base(root: Path) -> None:
    root.mkdir()
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
    }
    (root / "config.json").write_text(json.dumps(config))
    tensors: dict[str, tuple[str, list[int]]] = {
        "model.embed_tokens.weight": ("BF16", [VOCAB, HIDDEN])
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for module, width, out in PROJECTIONS:
            tensors[f"{p}.{module}.weight"] = ("BF16", [out, width])
            if module.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
                tensors[f"{p}.{module}.bias"] = ("BF16", [out])
        tensors[f"{p}.input_layernorm.weight"] = ("BF16", [HIDDEN])
        tensors[f"{p}.post_attention_layernorm.weight"] = ("BF16", [HIDDEN])
    tensors["model.norm.weight"] = ("BF16", [HIDDEN])
    tensors["lm_head.weight"] = ("BF16", [VOCAB, HIDDEN])
    names = list(tensors)
    per_shard = -(-len(names) // SHARDS)
    weight_map: dict[str, str] = {}
    for index in range(SHARDS):
        shard = f"model-{index + 1:05d}-of-{SHARDS:05d}.safetensors"
        members = names[index * per_shard : (index + 1) * per_shard]
        write_safetensors_header(root / shard, {name: tensors[name] for name in members})
        weight_map |= dict.fromkeys(members, shard)
    index_file = {"metadata": {}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index_file))
    print(f"base: {len(tensors)} tensors in {SHARDS} shards")


def _adapter(root: Path) -> None:
    root.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "target_modules": [module.split(".")[-1] for module, _, _ in PROJECTIONS],
        "bias": "none",
        "use_dora": False,
    }
    (root / "adapter_config.json").write_text(json.dumps(config))
    tensors: dict[str, tuple[str, list[int]]] = {}
    for i in range(LAYERS):
        for module, width, out in PROJECTIONS:
            p = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{p}.lora_A.weight"] = ("BF16", [RANK, width])
            tensors[f"{p}.lora_B.weight"] = ("BF16", [out, RANK])
    write_safetensors_header(root / "adapter_model.safetensors", tensors)


def _time_into(action: Callable[[], object], runs: list[float]) -> None:
    started = time.perf_counter()
    action()
    runs.append((time.perf_counter() - started) * 1000)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = root / "base"
        _base(base)
        adapters = [root / "adapters" / f"a{n}" for n in range(ADAPTERS)]
        for adapter in adapters:
            _adapter(adapter)

        def headers_only() -> object:
            return FitChecker(str(base), None, None).base

        warm = FitChecker(str(base), None, None)
        assert warm.base is not None

        def compare_one() -> object:
            problems = warm.check(read_adapter(adapters[0]))
            assert problems == [], problems
            return problems

        def preflight_one() -> object:
            return FitChecker(str(base), None, None).check(read_adapter(adapters[0]))

        def preflight_all() -> object:
            fit = FitChecker(str(base), None, None)
            return [fit.check(read_adapter(adapter)) for adapter in adapters]

        def read_data() -> object:
            shards = sorted(base.glob("*.safetensors"))
            return subprocess.run(["cat", *map(str, shards)], stdout=subprocess.DEVNULL, check=True)

        variants: dict[str, tuple[Callable[[], object], list[float]]] = {
            "(a) base headers alone": (headers_only, []),
            "(b) one adapter compared": (compare_one, []),
            "(c) preflight, one adapter": (preflight_one, []),
            f"(d) preflight, {ADAPTERS} adapters": (preflight_all, []),
            "(e) cat of the base's data": (read_data, []),
        }
        for _ in range(RUNS):
            for action, runs in variants.values():
                _time_into(action, runs)
        size = sum(path.stat().st_size for path in base.glob("*.safetensors")) / 1e9
        print(f"{len(adapters)} adapters of rank {RANK}, base {size:.1f} GB (sparse); {RUNS} runs")
        for label, (_, runs) in variants.items():
            print(f"{label:32} median {statistics.median(runs):9.2f} ms  (min {min(runs):.2f})")


if __name__ == "__main__":
    main()
