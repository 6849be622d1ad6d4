"""The reload diff of `lora.adapters` with `lora.runtime_updates`: adapters added, removed or
moved apply live (no restart); every other LoRA change still restarts vLLM. Real configs and
real launch plans."""

from __future__ import annotations

import json
from pathlib import Path

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.launch.plan import RUNTIME_LORA_ENV, plan_launch
from niodoo_supervisor.supervise.reload_diff import ConfigDiff, KeyClass, diff


def _config(tmp_path: Path, lora: str) -> Config:
    text = (
        "server: {python: /v/bin/python, port: 8000}\nmodel: {path: /models/m}\n"
        f"lora: {{enabled: true, {lora}}}\n"
        f"supervisor: {{state_dir: {tmp_path / 'state'}}}\n"
    )
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None, [problem.format() for problem in problems]
    return config


def _diff(tmp_path: Path, old: str, new: str) -> ConfigDiff:
    running, reloaded = _config(tmp_path, old), _config(tmp_path, new)
    return diff(running, reloaded, plan_launch(running, None, {}), plan_launch(reloaded, None, {}))


ONE = "adapters: [{name: a, path: /ad/a}]"
TWO = "adapters: [{name: a, path: /ad/a}, {name: b, path: /ad/b}]"
LIVE = "runtime_updates: true, max_lora_rank: 16, max_loras: 2"


def test_an_added_adapter_applies_live_with_runtime_updates(tmp_path: Path) -> None:
    change = _diff(tmp_path, f"{LIVE}, {ONE}", f"{LIVE}, {TWO}")
    assert not change.needs_restart
    assert change.keys(KeyClass.LIVE) == ["lora.adapters"]
    # The --lora-modules part of the command line is what the adapters change: not a restart.
    assert [each.key for each in change.changes] == ["lora.adapters"]


def test_a_removed_adapter_and_a_moved_one_apply_live(tmp_path: Path) -> None:
    moved = "adapters: [{name: a, path: /ad/a2}]"
    assert _diff(tmp_path, f"{LIVE}, {TWO}", f"{LIVE}, {ONE}").keys(KeyClass.LIVE) == [
        "lora.adapters"
    ]
    change = _diff(tmp_path, f"{LIVE}, {ONE}", f"{LIVE}, {moved}")
    assert not change.needs_restart and change.keys(KeyClass.LIVE) == ["lora.adapters"]


def test_other_lora_keys_still_restart_with_runtime_updates(tmp_path: Path) -> None:
    change = _diff(
        tmp_path, f"{LIVE}, {ONE}", f"runtime_updates: true, max_lora_rank: 32, max_loras: 2, {TWO}"
    )
    assert change.needs_restart
    assert change.keys(KeyClass.RESTART) == ["lora.max_lora_rank"]
    assert change.keys(KeyClass.LIVE) == ["lora.adapters"]  # said, though the restart does it


def test_adapters_restart_unless_runtime_updates_is_on_both_sides(tmp_path: Path) -> None:
    off = "max_lora_rank: 16, max_loras: 2"
    for old, new in ((off, LIVE), (LIVE, off), (off, off)):
        change = _diff(tmp_path, f"{old}, {ONE}", f"{new}, {TWO}")
        assert change.needs_restart, (old, new)
        assert "lora.adapters" in change.keys(KeyClass.RESTART)


def test_switching_runtime_updates_restarts_for_vllm_s_environment(tmp_path: Path) -> None:
    change = _diff(tmp_path, f"max_lora_rank: 16, max_loras: 2, {ONE}", f"{LIVE}, {ONE}")
    assert change.keys(KeyClass.RESTART) == ["lora.runtime_updates"]


def test_runtime_updates_sets_vllm_s_variable(tmp_path: Path) -> None:
    on = plan_launch(_config(tmp_path, f"{LIVE}, {ONE}"), None, {})
    off = plan_launch(_config(tmp_path, ONE), None, {})
    assert on.env[RUNTIME_LORA_ENV] == "1"
    assert RUNTIME_LORA_ENV not in off.env
    assert "--runtime-updates" not in " ".join(on.argv)  # not a vLLM flag


def _adapter(folder: Path, rank: int) -> str:
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "base_model_name_or_path": "/models/m"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return str(folder)


def test_an_adapter_that_raises_auto_rank_restarts(tmp_path: Path) -> None:
    small, large = _adapter(tmp_path / "s", 8), _adapter(tmp_path / "l", 32)
    auto = "runtime_updates: true, max_lora_rank: auto"
    change = _diff(
        tmp_path,
        f"{auto}, adapters: [{{name: s, path: {small}}}]",
        f"{auto}, adapters: [{{name: s, path: {small}}}, {{name: l, path: {large}}}]",
    )
    assert change.needs_restart
    assert [each.describe() for each in change.changes if each.kind is KeyClass.RESTART] == [
        "vLLM command line: 8 -> 32"
    ]


def test_runtime_updates_warns_that_vllm_calls_it_a_development_feature(tmp_path: Path) -> None:
    text = (
        "server: {python: /v/bin/python, port: 8000}\nmodel: {path: /models/m}\n"
        f"lora: {{enabled: true, {LIVE}}}\nsupervisor: {{state_dir: {tmp_path}}}\n"
    )
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None
    [warning] = [p for p in problems if p.path == "lora.runtime_updates"]
    assert not warning.is_error and "development feature" in warning.message
