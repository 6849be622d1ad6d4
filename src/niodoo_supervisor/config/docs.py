"""Generate docs/configuration.md and the config's JSON Schema from the config models.

`python -m niodoo_supervisor.config.docs` rewrites both; a test fails when either is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.fields import Kind
from niodoo_supervisor.config.loader import ALL_FIELDS, KEYS, Config
from niodoo_supervisor.config.values import range_text

__all__ = ["configuration_markdown", "json_schema", "write_all"]

_VARIABLE = {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$"}
# pydantic writes a constraint it could not fold into the type under its own name.
_JSON_SCHEMA_NAMES = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
}
_SECTION_TITLES = {
    "server": "server: how vLLM is started and reached",
    "model": "model: what vLLM serves",
    "engine": "engine: GPU memory, parallelism, batching",
    "lora": "lora: adapters",
    "supervisor": "supervisor: watching, restarting, stopping, logging",
    "maintenance": "maintenance: when planned restarts may happen",
    "drain": "drain: taking traffic away before a planned restart or stop",
    "topology": "topology: vLLM across several hosts",
    "gpu": "gpu: GPU memory through NVML",
    "rules": "rules: operator log rules",
}


def json_schema() -> dict[str, Any]:
    """The config models' own JSON Schema (`Config.model_json_schema()`), made self-contained
    for editors: sections inlined and nullable (`engine:` left empty is valid), and every
    number or boolean key also taking a `${VAR}` reference, as the loader does."""
    schema = Config.model_json_schema()
    definitions = schema.pop("$defs", {})
    root = _editor_node(schema, definitions, "")
    root.pop("description")  # the class's docstring, written for programmers
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "niodoo-supervisor config",
        **root,
    }


def _editor_node(node: Any, definitions: dict[str, Any], path: str | None) -> Any:
    """`node` with references inlined; `path` is the YAML path of a property's own schema
    (None inside it: its alternatives, items, ...)."""
    if isinstance(node, list):
        return [_editor_node(item, definitions, path) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        node = {**definitions[node["$ref"].rsplit("/", 1)[-1]], **siblings}
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "properties":
            prefix = f"{path}." if path else ""
            result[key] = {
                name: _editor_node(child, definitions, prefix + name)
                for name, child in value.items()
            }
        else:
            result[_JSON_SCHEMA_NAMES.get(key, key)] = _editor_node(value, definitions, None)
    if path is None:
        return result
    if path in KEYS.sections:
        result["type"] = ["object", "null"]
    spec = KEYS.by_key.get(path)
    if spec is not None and spec.kind in (Kind.INT, Kind.FLOAT, Kind.BOOL):
        return _with_variables(result)
    return result


def _with_variables(node: dict[str, Any]) -> dict[str, Any]:
    """`port: ${PORT}` is valid: the value may also be one variable reference."""
    outer: dict[str, Any] = {key: node[key] for key in ("description", "default") if key in node}
    inner = {key: value for key, value in node.items() if key not in outer}
    alternatives = inner["anyOf"] if list(inner) == ["anyOf"] else [inner]
    return {"anyOf": [*alternatives, _VARIABLE], **outer}


def _cell(value: object) -> str:
    if value is None or value in ([], {}, ()):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`" if not isinstance(value, str) or value else ""


def configuration_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models (`src/niodoo_supervisor/config/*_sections.py`, one declaration",
        "per key) by `python -m niodoo_supervisor.config.docs`; a test fails when this file is stale.",
        "The JSON Schema beside it, `schema/niodoo-supervisor.schema.json`, lets editors validate the",
        "YAML.",
        "",
        "Strings may use `${VAR}` (an error when VAR is unset), `${VAR:-default}` and `$$` for `$`.",
        "Relative paths are resolved against the config file's folder. A vLLM option that is",
        "absent is not rendered: vLLM applies its own default (the `vLLM default` column).",
        "`vLLM versions` names the releases that have the flag; `check` compares them with the",
        "installed vLLM.",
    ]
    current = None
    # Grouped by YAML section; within one, in table (= command line) order.
    for spec in sorted(ALL_FIELDS, key=lambda spec: list(_SECTION_TITLES).index(spec.section)):
        if spec.section != current:
            current = spec.section
            lines += ["", f"## {_SECTION_TITLES[current]}", ""]
            lines += [
                "| key | type | default | flag | vLLM default | vLLM versions | meaning |",
                "|---|---|---|---|---|---|---|",
            ]
        choices = ""
        if spec.choices is not None:
            choices = (
                " One of: "
                + ", ".join(f"`{choice}`" for choice in spec.choices)
                + (", `auto`" if spec.allow_auto else "")
                + "."
            )
        bounds = range_text(spec) if spec.kind in (Kind.INT, Kind.FLOAT) else ""
        limits = f" Range: {bounds}." if bounds else ""
        required = " **Required.**" if spec.required else ""
        versions = spec.versions_text() if spec.flag else ""
        lines.append(
            f"| `{spec.key}` | {spec.kind.value} | {_cell(spec.default)} | {f'`{spec.flag}`' if spec.flag else ''} "
            f"| {_cell(spec.vllm_default)} | {versions} | {spec.doc}{choices}{limits}{required} |"
        )
    return "\n".join(lines) + "\n"


def write_all(root: Path) -> None:
    (root / "docs").mkdir(exist_ok=True)
    (root / "schema").mkdir(exist_ok=True)
    (root / "docs" / "configuration.md").write_text(configuration_markdown())
    (root / "schema" / "niodoo-supervisor.schema.json").write_text(
        json.dumps(json_schema(), indent=2) + "\n"
    )


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
