"""The package layout draws the architecture: each subpackage imports only what its docstring
allows, and every name has one import path (no module re-exports another's names)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "niodoo_supervisor"
TOP_LEVEL_MODULES = {"exitcodes"}

# What each subpackage may import, as its __init__ docstring says: a subpackage, or one module
# of it (`logs.rule_types`).
ALLOWED: dict[str, set[str]] = {
    "files": {"exitcodes"},
    "logs": {"files", "output"},
    "config": {"files", "logs.rule_types", "logs.operator_rules", "exitcodes"},
    "launch": {"config", "files", "exitcodes"},
    "supervise": {"config", "launch", "logs", "files", "control", "output", "gpu", "exitcodes"},
    "control": {"config", "files", "exitcodes"},
    "demo": set(),
    "gpu": set(),
    "output": set(),
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path) -> list[ast.ImportFrom]:
    tree = ast.parse(path.read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and node.module.split(".")[0] == "niodoo_supervisor"
    ]


def _defined_names(path: Path) -> set[str]:
    """Names a module binds itself at its top level (imports excluded)."""
    names: set[str] = set()
    body = list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.If | ast.Try):  # definitions under `if` or `try`
            body.extend([*node.body, *node.orelse])
    return names


def _source_of(module: str) -> Path | None:
    inner = module.split(".")[1:]
    if not inner:
        return PACKAGE / "__init__.py"
    relative = Path(*inner)
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_folders_name_the_path_from_yaml_to_a_supervised_vllm() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED) | {"cli"}
    for folder in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, f"{folder}/__init__.py must say what it may import"


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_a_subpackage_imports_only_what_its_docstring_allows(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0]
    if own not in ALLOWED:
        return  # cli/ and the top-level modules may import anything
    for node in _project_imports(path):
        assert node.module is not None
        parts = node.module.split(".")
        target = parts[1] if len(parts) > 1 else None
        # `from niodoo_supervisor import exitcodes` names the top-level module itself
        targets = {alias.name for alias in node.names} if target is None else {target}
        module = ".".join(parts[1:3])
        foreign = set() if module in ALLOWED[own] else targets - {own} - ALLOWED[own]
        assert not foreign, (
            f"{_dotted(path)} imports {node.module}: {own}/ may not import {foreign}"
        )


@pytest.mark.parametrize("path", [*_modules(), *sorted(PACKAGE.parents[1].glob("tests/**/*.py"))])
def test_every_imported_name_comes_from_the_module_that_defines_it(path: Path) -> None:
    for node in _project_imports(path):
        assert node.module is not None
        source = _source_of(node.module)
        assert source is not None, f"{path.name}: no module {node.module}"
        defined = _defined_names(source)
        for alias in node.names:
            submodule = _source_of(f"{node.module}.{alias.name}")
            assert alias.name in defined or submodule is not None, (
                f"{path.name} imports {alias.name} from {node.module}, which does not define it"
            )
