"""Generate docs/configuration.md and the config's JSON Schema from the field tables.

`python -m niodoo_supervisor.config.docs` rewrites both; a test fails when either is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.fields import Field, Kind
from niodoo_supervisor.config.loader import ALL_FIELDS
from niodoo_supervisor.config.values import range_text

__all__ = ["configuration_markdown", "json_schema", "write_all"]

_VARIABLE = {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$"}
_SECTION_TITLES = {
    "server": "server: how vLLM is started and reached",
    "model": "model: what vLLM serves",
    "engine": "engine: GPU memory, parallelism, batching",
    "lora": "lora: adapters",
    "supervisor": "supervisor: watching, restarting, stopping, logging",
    "rules": "rules: operator log rules",
}


def _schema_for(spec: Field) -> dict[str, Any]:
    kind = spec.kind
    schema: dict[str, Any]
    if kind in (Kind.STR, Kind.PATH):
        schema = {"type": "string", "minLength": 1}
    elif kind is Kind.BOOL:
        schema = {"type": "boolean"}
    elif kind in (Kind.INT, Kind.FLOAT):
        schema = {"type": "integer" if kind is Kind.INT else "number"}
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
        if spec.exclusive_minimum is not None:
            schema["exclusiveMinimum"] = spec.exclusive_minimum
    elif kind is Kind.STR_LIST:
        schema = {"type": "array", "items": {"type": ["string", "number"]}}
    elif kind is Kind.STR_MAP:
        schema = {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
    elif kind is Kind.ADAPTERS:
        schema = {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "path"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[^\s=]+$"},
                    "path": {"type": "string", "minLength": 1},
                    "base_model_name": {"type": "string"},
                },
            },
        }
    else:  # Kind.RULES
        schema = {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "pattern"],
                "properties": {
                    "name": {"type": "string"},
                    "pattern": {"type": "string"},
                    "severity": {"enum": ["info", "warning", "error", "critical"]},
                    "action": {"enum": ["log", "check_now", "fatal"]},
                    "hint": {"type": "string"},
                },
            },
        }
    if spec.choices is not None and spec.key != "model.quantization":
        schema["enum"] = list(spec.choices) + (["auto"] if spec.allow_auto else [])
        schema.pop("minLength", None)
        if spec.allow_auto:
            schema.pop("type", None)
    schema["description"] = spec.doc
    if spec.default not in (None, [], {}):
        schema["default"] = spec.default
    if kind in (Kind.INT, Kind.FLOAT, Kind.BOOL):
        return {"anyOf": [schema, _VARIABLE], "description": spec.doc}
    return schema


def json_schema() -> dict[str, Any]:
    root: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "niodoo-supervisor config",
        "type": "object",
        "additionalProperties": False,
        "properties": {},
        "required": [],
    }
    for spec in ALL_FIELDS:
        node = root
        parts = spec.key.split(".")
        for part in parts[:-1]:
            node = node["properties"].setdefault(
                part, {"type": ["object", "null"], "additionalProperties": False, "properties": {}}
            )
        node["properties"][parts[-1]] = _schema_for(spec)
        if spec.required:
            # Sections holding a required key are required themselves.
            node.setdefault("required", []).append(parts[-1])
            if len(parts) == 2 and parts[0] not in root["required"]:
                root["required"].append(parts[0])
    return root


def _cell(value: object) -> str:
    if value is None or value in ([], {}):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`" if not isinstance(value, str) or value else ""


def configuration_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the field tables (`src/niodoo_supervisor/config/vllm_options.py`, `supervisor_settings.py`) by",
        "`python -m niodoo_supervisor.config.docs`; a test fails when this file is stale. The JSON Schema",
        "beside it, `schema/niodoo-supervisor.schema.json`, lets editors validate the YAML.",
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
