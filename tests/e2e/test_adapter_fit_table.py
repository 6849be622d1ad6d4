"""The fit check's embedding-LoRA table, read again from the installed vLLM's source.

vLLM 0.32 applies a LoRA to `embed_tokens`/`lm_head` when the model class (or a base class)
declares `embedding_modules` (vllm/lora/utils.py's get_supported_lora_modules); SupportsLoRA's
default is {}. This follows each architecture of registry.py's _TEXT_GENERATION_MODELS to its
class and up its bases with `ast` (no vLLM import, no server start) and compares the result
with `embedding_lora_modules`.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.adapter_features import embedding_lora_modules

pytestmark = pytest.mark.e2e

_MODELS_PACKAGE = "vllm.model_executor.models."
_Class = tuple[str, str]  # (module in model_executor/models, class name)


class _Source:
    def __init__(self, models: Path) -> None:
        self.trees = {path.stem: ast.parse(path.read_text()) for path in models.glob("*.py")}
        self.classes = {
            (module, node.name): node
            for module, tree in self.trees.items()
            for node in tree.body
            if isinstance(node, ast.ClassDef)
        }

    def _base(self, module: str, name: str) -> _Class | None:
        if (module, name) in self.classes:
            return module, name
        for node in ast.walk(self.trees[module]):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.level == 1 or node.module.startswith(_MODELS_PACKAGE):
                origin = node.module.removeprefix(_MODELS_PACKAGE).split(".")[0]
                if any((a.asname or a.name) == name for a in node.names):
                    return (origin, name) if (origin, name) in self.classes else None
        return None

    def embedding_modules(self, key: _Class) -> frozenset[str] | None:
        """The class's embedding modules; None when it is no LoRA model as far as read."""
        node = self.classes[key]
        for statement in node.body:
            if (
                isinstance(statement, ast.Assign)
                and [ast.unparse(t) for t in statement.targets] == ["embedding_modules"]
                and isinstance(statement.value, ast.Dict)
            ):
                return frozenset(ast.literal_eval(k) for k in statement.value.keys if k)
        lora = False
        for base in (ast.unparse(b).split("[")[0] for b in node.bases):
            lora = lora or base == "SupportsLoRA"
            found = self._base(key[0], base)
            inherited = self.embedding_modules(found) if found else None
            if inherited:
                return inherited
            lora = lora or inherited is not None
        return frozenset() if lora else None


def _text_models(source: _Source) -> dict[str, _Class]:
    for node in source.trees["registry"].body:
        if (
            isinstance(node, ast.Assign)
            and ast.unparse(node.targets[0]) == "_TEXT_GENERATION_MODELS"
            and isinstance(node.value, ast.Dict)
        ):
            return {
                ast.literal_eval(k): tuple(ast.literal_eval(v)[:2])
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if k is not None
            }
    raise AssertionError("registry.py has no _TEXT_GENERATION_MODELS")


def test_the_embedding_lora_table_is_what_vllm_0_32_s_model_classes_declare(
    vllm_python: str,
) -> None:
    # Where vLLM is and which version, without importing it (seconds on the CPU build).
    script = (
        "import importlib.util, runpy; "
        "package = importlib.util.find_spec('vllm').submodule_search_locations[0]; "
        "print(runpy.run_path(package + '/_version.py')['__version__'], package)"
    )
    out = subprocess.run([vllm_python, "-c", script], capture_output=True, text=True, check=True)
    version_text, package = out.stdout.split()
    version = Version.parse(version_text)
    if (version.major, version.minor) != (0, 32):
        pytest.skip(f"the table was read for vLLM 0.32, this is {version_text}")
    source = _Source(Path(package) / "model_executor" / "models")
    derived = {
        architecture: source.embedding_modules(key) if key in source.classes else None
        for architecture, key in _text_models(source).items()
    }
    table = {
        architecture: embedding_lora_modules(architecture, version) for architecture in derived
    }
    assert table == derived
    assert table["LlamaForCausalLM"] == frozenset({"embed_tokens", "lm_head"})
    assert table["Qwen2ForCausalLM"] == frozenset()
