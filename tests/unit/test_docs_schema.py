"""docs/configuration.md and the JSON Schema are generated from the field tables and current."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no types-jsonschema in the dev venv
import pytest
import yaml

from niodoo_supervisor.config.docs import configuration_markdown, json_schema, write_all
from niodoo_supervisor.config.loader import ALL_FIELDS

REGENERATE = (
    "stale: regenerate it with `python -m niodoo_supervisor.config.docs` at the repository root"
)


def _validator(repo: Path) -> Any:
    schema = json.loads((repo / "schema/niodoo-supervisor.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: Any, document: object) -> list[str]:
    return [error.message for error in validator.iter_errors(document)]


def test_markdown_is_current(repo: Path) -> None:
    on_disk = (repo / "docs/configuration.md").read_text()
    assert on_disk == configuration_markdown(), f"docs/configuration.md is {REGENERATE}"


def test_schema_is_current(repo: Path) -> None:
    on_disk = json.loads((repo / "schema/niodoo-supervisor.schema.json").read_text())
    assert on_disk == json_schema(), f"schema/niodoo-supervisor.schema.json is {REGENERATE}"
    text = (repo / "schema/niodoo-supervisor.schema.json").read_text()
    assert text == json.dumps(json_schema(), indent=2) + "\n", f"its layout is {REGENERATE}"


def test_write_all_writes_exactly_the_generated_files(tmp_path: Path) -> None:
    write_all(tmp_path)
    assert (tmp_path / "docs/configuration.md").read_text() == configuration_markdown()
    assert json.loads((tmp_path / "schema/niodoo-supervisor.schema.json").read_text()) == (
        json_schema()
    )


def test_every_field_is_documented_once_in_its_section() -> None:
    markdown = configuration_markdown()
    rows: dict[str, tuple[str | None, str]] = {}
    section = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            section = line[3:].split(":", 1)[0]
        elif line.startswith("| `"):
            key = line.split("`")[1]
            assert key not in rows, f"{key} documented twice"
            rows[key] = (section, line)
    assert set(rows) == {spec.key for spec in ALL_FIELDS}
    for spec in ALL_FIELDS:
        section, line = rows[spec.key]
        assert section == spec.section, spec.key
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert cells[1] == spec.kind.value, spec.key
        assert cells[3] == (f"`{spec.flag}`" if spec.flag else ""), spec.key
        assert spec.doc in cells[6], spec.key
        assert ("**Required.**" in cells[6]) is spec.required, spec.key


def test_every_field_is_in_the_schema() -> None:
    schema = json_schema()
    for spec in ALL_FIELDS:
        node = schema
        for part in spec.key.split("."):
            node = node["properties"][part]
        assert node["description"] == spec.doc, spec.key


@pytest.mark.parametrize("name", ["niodoo.yaml", "demo-cpu.yaml"])
def test_shipped_configs_validate_against_the_schema(repo: Path, name: str) -> None:
    document = yaml.safe_load((repo / "config" / name).read_text())
    assert _errors(_validator(repo), document) == []


def _demo(repo: Path) -> dict[str, Any]:
    document = yaml.safe_load((repo / "config/demo-cpu.yaml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(servr={}), "'servr' was unexpected"),
        (lambda d: d["lora"].update(max_lora_rnak=16), "'max_lora_rnak' was unexpected"),
        (lambda d: d["supervisor"]["health"].update(intervall=5), "'intervall' was unexpected"),
        (lambda d: d["lora"]["adapters"][0].update(rank=8), "'rank' was unexpected"),
    ],
)
def test_unknown_keys_fail_schema_validation(repo: Path, change: Any, expected: str) -> None:
    validator = _validator(repo)
    document = _demo(repo)
    assert _errors(validator, document) == []
    broken = copy.deepcopy(document)
    change(broken)
    errors = _errors(validator, broken)
    assert any(expected in message for message in errors), errors


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["server"].update(port="eight thousand"),
        lambda d: d["lora"].update(max_lora_rank=24),
        lambda d: d["lora"].update(enabled="yes"),
        lambda d: d["model"].update(dtype="fp64"),
        lambda d: d.pop("model"),
        lambda d: d["lora"]["adapters"][0].pop("path"),
    ],
)
def test_wrong_values_fail_schema_validation(repo: Path, change: Any) -> None:
    validator = _validator(repo)
    broken = _demo(repo)
    change(broken)
    assert _errors(validator, broken) != []


def test_variables_and_auto_pass_schema_validation(repo: Path) -> None:
    validator = _validator(repo)
    document = _demo(repo)
    document["server"]["port"] = "${PORT:-8001}"
    document["lora"]["max_lora_rank"] = "auto"
    document["engine"] = {"enforce_eager": "${EAGER}"}
    assert _errors(validator, document) == []


def test_empty_sections_and_keys_pass_schema_validation_as_the_loader_takes_them(
    repo: Path,
) -> None:
    document = _demo(repo)
    document["engine"] = None
    document["model"]["max_model_len"] = None
    document["supervisor"]["health"] = None
    assert _errors(_validator(repo), document) == []
