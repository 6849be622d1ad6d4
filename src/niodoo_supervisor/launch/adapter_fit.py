"""Whether a LoRA adapter fits the base model it will be served on, from files alone.

vLLM (0.32, 0.33) checks an adapter only when it loads it, and only partly: it compares each
module's last name (`q_proj`) with the names its model class can wrap ("expected target modules
in {...}"), refusing a stranger such as `w_proj` after the whole model load. A module whose
last name fits but whose path does not (the `language_model.` prefix: #34186, #48019) loads
without a word and is never applied; so is every module `--lora-target-modules` leaves out
(#55193). The adapter is then listed and serves base-model output.

This compares the adapter's tensor headers with the base checkpoint's (see
`checkpoint_headers`), as vLLM matches them: PEFT's `base_model.model.` prefix dropped, the
module path looked up in the base (`<module>.weight`, or `.qweight` for AWQ/GPTQ), the last
name among the base's linear layers, `lora.target_modules` applied to vLLM's packed modules
(`qkv_proj` holds q/k/v_proj). LoRA A is [r, in], B is [out, r]; in/out come from the base's
`weight` [out, in], or from config.json for the projections of a quantized base.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.adapter_features import embedding_lora_modules, feature_problems
from niodoo_supervisor.launch.checkpoint_headers import (
    BaseCheckpoint,
    CheckpointError,
    TensorHeader,
    read_safetensors_header,
)

__all__ = ["FitProblem", "adapter_fit"]

_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_embedding_A": "embedding A",
    ".lora_embedding_B": "embedding B",
}
# vLLM skips these (PEFT saves the base embedding beside an embedding LoRA); it reads the
# weights of `classifier` and `score` heads as modules_to_save.
_SKIPPED_SUFFIXES = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")
# vLLM's packed layers (the model classes' packed_modules_mapping): --lora-target-modules
# matches the packed name and its parts alike.
_PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_PACKED_PARENT = {part: parent for parent, parts in _PACKED.items() for part in parts}
_EMBEDDING_LEAVES = frozenset({"embed_tokens", "lm_head"})
_SHOWN = 3  # names shown in a message before "and N more"
_SHOWN_CHARS = 200  # of each name: tensor names are the adapter file's, any length
_MAX_PREFIX_PARTS = 8  # leading path parts tried as an extra prefix (`language_model.`)
_LATE = "vLLM refuses the adapter only when it loads it (for --lora-modules: after the whole model load)"
_SILENT = "vLLM loads it and would silently serve base-model output"


@dataclass(frozen=True)
class FitProblem:
    error: bool
    message: str
    fix: str = ""


@dataclass
class _Module:
    shapes: dict[str, tuple[int, ...]]  # "A"/"B"/"embedding A"/"embedding B" -> shape
    keys: dict[str, str]  # the same kinds -> the tensor's name in the adapter file


def adapter_fit(
    adapter_dir: Path,
    adapter_config: Mapping[str, Any],
    base: BaseCheckpoint,
    *,
    vllm_version: Version | None = None,
    lora_target_modules: Sequence[str] | None = None,
) -> list[FitProblem]:
    """Every way the adapter in `adapter_dir` would fail or do nothing on `base`."""
    problems = [
        FitProblem(p.error, p.message) for p in feature_problems(adapter_config, vllm_version)
    ]
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return problems  # adapter_model.bin: pickled tensors are not opened here
    try:
        tensors = read_safetensors_header(weights)
    except CheckpointError as exc:
        return [*problems, FitProblem(True, str(exc), "replace the adapter's files")]
    modules, strays = _modules(tensors)
    if strays:
        problems.append(
            FitProblem(
                True,
                f"{_few(strays)} are no LoRA weights vLLM can read ('... is unsupported LoRA "
                f"weight'): {_LATE}",
                "save the adapter as a plain PEFT LoRA",
            )
        )
    view = _BaseView(base, vllm_version)
    _check_modules(modules, view, lora_target_modules, problems)
    _check_shapes(modules, view, adapter_config, problems)
    return problems


class _BaseView:
    """The base checkpoint's modules, as vLLM's LoRA loader sees them."""

    def __init__(self, base: BaseCheckpoint, version: Version | None) -> None:
        self.base = base
        # None: not verified for this class or version; taken as applied, with a warning.
        self.embedding_leaves = embedding_lora_modules(base.architecture, version)
        text = base.text_config
        self.vocab = text.get("vocab_size")
        self.wrapper = any(key in base.config for key in ("text_config", "vision_config"))
        self.weights: dict[str, TensorHeader] = {}
        self.packed: set[str] = set()
        for name, header in base.tensors.items():
            if name.endswith(".weight"):
                self.weights[name.removesuffix(".weight")] = header
            elif name.endswith(".qweight"):
                self.packed.add(name.removesuffix(".qweight"))
        self.lora_leaves = {
            _leaf(module)
            for module, header in self.weights.items()
            if len(header.shape) == 2 and self._lora_capable(module)
        } | {_leaf(module) for module in self.packed}

    def _lora_capable(self, module: str) -> bool:
        if not self.is_embedding(module):
            return True
        return self.embedding_leaves is None or _leaf(module) in self.embedding_leaves

    def is_embedding(self, module: str) -> bool:
        header = self.weights.get(module)
        return _leaf(module) in _EMBEDDING_LEAVES or (
            header is not None and len(header.shape) == 2 and header.shape[0] == self.vocab
        )

    def has(self, module: str) -> bool:
        return module in self.weights or module in self.packed

    def instead(self, module: str) -> str:
        """What the base has where the adapter names `module`."""
        parts = module.split(".")
        for cut in range(1, min(len(parts), _MAX_PREFIX_PARTS + 1)):
            if self.has(".".join(parts[cut:])):
                return f"the base has {'.'.join(parts[cut:])} (without the `{'.'.join(parts[:cut])}.` prefix)"
        names = sorted({*self.weights, *self.packed})
        dotted = "." + module
        longer = next((name for name in names if name.endswith(dotted)), None)
        if longer is not None:
            return f"the base has {longer}"
        leaf = parts[-1]
        same = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in names if n.rsplit(".", 1)[-1] == leaf})
        if same:
            return f"the base's {leaf} modules are {', '.join(same[:_SHOWN])}"
        return (
            f"the base's LoRA-capable modules are {', '.join(sorted(self.lora_leaves)) or 'none'}"
        )

    def features(self, module: str, leaf: str, embedding: bool) -> tuple[int, int] | None:
        """(in, out) of the base layer, or None when its files do not say."""
        header = self.weights.get(module)
        if header is not None and len(header.shape) == 2:
            rows, columns = header.shape
            return (rows, columns) if embedding else (columns, rows)
        if module in self.packed:
            return _projection_features(self.base.text_config, leaf)
        return None


def _modules(tensors: Mapping[str, TensorHeader]) -> tuple[dict[str, _Module], list[str]]:
    modules: dict[str, _Module] = {}
    strays: list[str] = []
    for key, header in tensors.items():
        if key.endswith(_SKIPPED_SUFFIXES):
            continue
        name = key.removeprefix(_PEFT_PREFIX)
        kind = next((k for suffix, k in _LORA_SUFFIXES.items() if name.endswith(suffix)), None)
        if kind is None:
            if name.split(".")[-2:-1] not in (["classifier"], ["score"]):
                strays.append(key)
            continue
        suffix = next(s for s, k in _LORA_SUFFIXES.items() if k == kind)
        module = modules.setdefault(name.removesuffix(suffix), _Module({}, {}))
        module.shapes[kind] = header.shape
        module.keys[kind] = key
    return modules, strays


def _check_modules(
    modules: Mapping[str, _Module],
    view: _BaseView,
    targets: Sequence[str] | None,
    problems: list[FitProblem],
) -> None:
    absent_known = [m for m in modules if not view.has(m) and _leaf(m) in view.lora_leaves]
    absent_strange = [m for m in modules if not view.has(m) and _leaf(m) not in view.lora_leaves]
    present_refused = [m for m in modules if view.has(m) and _leaf(m) not in view.lora_leaves]
    capable = [m for m in modules if view.has(m) and _leaf(m) in view.lora_leaves]
    if absent_strange:
        problems.append(
            FitProblem(
                True,
                f"targets modules the base model does not have ({_few(absent_strange)}); "
                f"{view.instead(absent_strange[0])}: {_LATE} ('expected target modules in "
                "{...} but received [...]')",
                "train the adapter on this base model's module names",
            )
        )
    if present_refused:
        problems.append(
            FitProblem(
                True,
                f"targets {_few(present_refused)}, which vLLM does not apply a LoRA to for "
                f"{view.base.architecture or 'this model'} (it does to "
                f"{', '.join(sorted(view.lora_leaves))}): {_LATE}",
                "train the adapter without those modules",
            )
        )
    if absent_known:
        whole = not capable and not absent_strange and not present_refused
        effect = _SILENT if whole else "vLLM loads it and silently applies nothing there"
        # A wrapper model's class renames checkpoint paths (its hf_to_vllm_mapper, applied to
        # the adapter too): two spellings of one module may both work, so only a warning.
        if view.wrapper:
            effect = f"unless vLLM's renaming for {view.base.architecture} maps them, {effect}"
        problems.append(
            FitProblem(
                not view.wrapper,
                f"{len(absent_known)} of its {len(modules)} modules exist nowhere in the base "
                f"model ({_few(absent_known)}); {view.instead(absent_known[0])}: {effect}",
                "rename the adapter's tensors to the base's module paths, or train it on this base model",
            )
        )
    unverified = [m for m in capable if view.embedding_leaves is None and view.is_embedding(m)]
    if unverified:
        problems.append(
            FitProblem(
                False,
                f"targets {_few(unverified)}: a LoRA on embeddings is not verified for "
                f"{view.base.architecture or 'this model'} on this vLLM (read for vLLM 0.32's "
                "text models); where its model class declares no `embedding_modules`, "
                f"{_LATE}",
                "look for `embedding_modules` in vLLM's model class, or train without them",
            )
        )
    if targets is None or not capable:
        return
    excluded = [m for m in capable if not _targeted(m, set(targets))]
    if not excluded:
        return
    allowed = ", ".join(targets) or "nothing"
    if len(excluded) == len(capable) and not absent_known:
        problems.append(
            FitProblem(
                True,
                f"lora.target_modules ({allowed}) leaves out every one of its modules "
                f"({_few(excluded)}): {_SILENT} (vllm#55193)",
                "add its modules to lora.target_modules, or remove that key",
            )
        )
    elif len(excluded) < len(capable):
        problems.append(
            FitProblem(
                False,
                f"lora.target_modules ({allowed}) leaves out {len(excluded)} of its modules "
                f"({_few(excluded)}): vLLM applies the adapter without them",
                "add them to lora.target_modules if they matter",
            )
        )


def _targeted(module: str, targets: Collection[str]) -> bool:
    """vLLM's `is_in_target_modules`, seen from the adapter's (unpacked) module name."""
    leaf = _leaf(module)
    if leaf in targets or module in targets:
        return True
    parent = _PACKED_PARENT.get(leaf)
    if parent is None:
        return False
    packed_path = module[: -len(leaf)] + parent
    return parent in targets or packed_path in targets or any(p in targets for p in _PACKED[parent])


def _check_shapes(
    modules: Mapping[str, _Module],
    view: _BaseView,
    adapter_config: Mapping[str, Any],
    problems: list[FitProblem],
) -> None:
    misfits: list[str] = []
    ranks: list[str] = []
    derived = False
    for name, module in modules.items():
        if not view.has(name):
            continue
        embedding = "embedding A" in module.shapes or "embedding B" in module.shapes
        features = view.features(name, _leaf(name), embedding)
        derived = derived or (features is not None and name not in view.weights)
        a_kind, b_kind = ("embedding A", "embedding B") if embedding else ("A", "B")
        a, b = module.shapes.get(a_kind), module.shapes.get(b_kind)
        if a is None or b is None:
            missing = a_kind if a is None else b_kind
            misfits.append(f"{name} has no lora_{missing.replace(' ', '_')}")
            continue
        rank = a[0] if len(a) == 2 else None
        if features is not None and rank is not None:
            width, height = features
            if a != (rank, width):
                misfits.append(f"{module.keys[a_kind]} is {list(a)}, expected {[rank, width]}")
            if b != (height, rank):
                misfits.append(f"{module.keys[b_kind]} is {list(b)}, expected {[height, rank]}")
        elif len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            misfits.append(
                f"{module.keys[a_kind]} {list(a)} and {module.keys[b_kind]} {list(b)} are no rank-r pair"
            )
        wanted = _configured_rank(name, adapter_config)
        if rank is not None and wanted is not None and rank != wanted:
            ranks.append(f"{name} has rank {rank}, adapter_config.json says {wanted}")
    if misfits:
        source = " (in/out of quantized layers from config.json)" if derived else ""
        problems.append(
            FitProblem(
                True,
                f"{len(misfits)} LoRA tensor shape(s) do not fit the base layers{source}: "
                f"{_few(misfits, sep='; ')}: vLLM copies what fits into its LoRA slots, so a "
                "narrower tensor serves wrong output without a word and a wider one fails at "
                "the adapter's first request",
                "train the adapter on this base model",
            )
        )
    if ranks:
        problems.append(
            FitProblem(
                True,
                f"the tensors' rank differs from adapter_config.json's r/rank_pattern: "
                f"{_few(ranks, sep='; ')}: vLLM scales the LoRA by the config's rank",
                "fix r/rank_pattern in adapter_config.json",
            )
        )


def _configured_rank(module: str, adapter_config: Mapping[str, Any]) -> int | None:
    """PEFT's rank for `module`: the first rank_pattern key that is a dot-bounded suffix of
    it, else `r`. None when a key is a regular expression: it is not run (a hostile pattern
    could take forever), so the rank is not compared."""
    pattern = adapter_config.get("rank_pattern") or {}
    for key, rank in pattern.items() if isinstance(pattern, dict) else ():
        if re.search(r"[^\w.\-]", str(key)):
            return None
        if module == key or module.endswith("." + str(key)):
            return rank if isinstance(rank, int) else None
    rank = adapter_config.get("r")
    return rank if isinstance(rank, int) else None


def _projection_features(config: Mapping[str, Any], leaf: str) -> tuple[int, int] | None:
    """(in, out) of a transformer's projections from config.json (quantized bases pack their
    weights: AWQ's qweight is [in, out/8], GPTQ's [in/8, out] for 4 bits)."""
    hidden, inter = _positive(config, "hidden_size"), _positive(config, "intermediate_size")
    heads = _positive(config, "num_attention_heads")
    if hidden is None or inter is None or heads is None:
        return None
    kv_heads = _positive(config, "num_key_value_heads") or heads
    head_dim = _positive(config, "head_dim") or hidden // heads
    table = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    return table.get(leaf)


def _positive(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _leaf(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _few(items: Sequence[str], sep: str = ", ") -> str:
    shown = sep.join(item[:_SHOWN_CHARS] for item in items[:_SHOWN])
    more = len(items) - _SHOWN
    return f"{shown} and {more} more" if more > 0 else shown
