"""`lora.lora_name_field` outside the middleware: what the launch plan adds for each mode, the
files written for vLLM, the live adapter hook, a reload's class, and the guard's log lines as
the rules read them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapter_routes import FakeVllm, adapter_api, adapter_folder
from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.launch.guard.niodoo_lora_guard import SETTINGS_ENV
from niodoo_supervisor.launch.lora_guard import GUARD_MIDDLEWARE, write_guard
from niodoo_supervisor.launch.plan import plan_launch
from niodoo_supervisor.logs.operator_rules import compile_user_rules
from niodoo_supervisor.logs.rules import RuleSet
from niodoo_supervisor.supervise.live_adapters import AdapterChange, LiveAdapters
from niodoo_supervisor.supervise.reload_diff import KeyClass, diff
from niodoo_supervisor.supervise.status_file import StatusBoard

PACKAGE_MODULE = (
    Path(__file__).resolve().parents[2] / "src/niodoo_supervisor/launch/guard/niodoo_lora_guard.py"
)


def _config(
    tmp_path: Path,
    mode: str | None,
    *,
    env: str = "",
    adapters: dict[str, str] | None = None,
    runtime_updates: bool = False,
) -> Config:
    field = f", lora_name_field: {mode}" if mode else ""
    listed = ", ".join(f"{{name: {n}, path: {p}}}" for n, p in (adapters or {"a": "/ad/a"}).items())
    text = (
        f"server: {{python: /v/bin/python, extra_args: [--seed, '1']{env}}}\n"
        "model: {path: /models/m, served_name: tiny}\n"
        f"lora: {{enabled: true, max_loras: 2, max_lora_rank: 16, "
        f"runtime_updates: {str(runtime_updates).lower()}, adapters: [{listed}]{field}}}\n"
        f"supervisor: {{state_dir: {tmp_path / 'state'}}}\n"
    )
    config, problems = parse_config(text, base_dir=tmp_path, environ={})
    assert config is not None, [problem.format() for problem in problems]
    return config


@pytest.mark.parametrize("mode", [None, "log"])
def test_log_mode_adds_no_middleware(tmp_path: Path, mode: str | None) -> None:
    plan = plan_launch(_config(tmp_path, mode), None, {"PYTHONPATH": "/mine"})
    assert "--middleware" not in plan.argv
    assert plan.lora_guard is None
    assert "PYTHONPATH" not in plan.env and SETTINGS_ENV not in plan.env


@pytest.mark.parametrize("mode", ["reject", "route"])
def test_reject_and_route_put_the_middleware_first_on_vllm_s_path(
    tmp_path: Path, mode: str
) -> None:
    config = _config(tmp_path, mode, env=", env: {PYTHONPATH: /operator/lib}")
    plan = plan_launch(config, None, {"PYTHONPATH": "/supervisor/own"})
    folder = tmp_path / "state" / "lora-guard"
    assert plan.argv[-4:] == ("--middleware", GUARD_MIDDLEWARE, "--seed", "1")
    assert GUARD_MIDDLEWARE == "niodoo_lora_guard.LoraNameGuard"
    assert plan.env["PYTHONPATH"] == f"{folder}:/operator/lib"  # the operator's after it
    assert plan.env[SETTINGS_ENV] == str(folder / "settings.json")
    assert plan.lora_guard is not None
    assert plan.lora_guard.settings() == {"mode": mode, "served_model": "tiny", "adapters": ["a"]}
    # without one in server.env, the PYTHONPATH vLLM would have inherited is kept
    plan = plan_launch(_config(tmp_path, mode), None, {"PYTHONPATH": "/supervisor/own"})
    assert plan.env["PYTHONPATH"] == f"{folder}:/supervisor/own"
    plan = plan_launch(_config(tmp_path, mode), None, {})
    assert plan.env["PYTHONPATH"] == str(folder)


def test_the_files_written_run_standalone(tmp_path: Path) -> None:
    plan = plan_launch(_config(tmp_path, "route"), None, {})
    assert plan.lora_guard is not None
    write_guard(plan.lora_guard)
    folder = tmp_path / "state" / "lora-guard"
    assert (folder / "niodoo_lora_guard.py").read_bytes() == PACKAGE_MODULE.read_bytes()
    settings = json.loads((folder / "settings.json").read_text())
    assert settings == {"mode": "route", "served_model": "tiny", "adapters": ["a"]}
    # vLLM imports it by name from its PYTHONPATH, without this package (-S: no site-packages)
    code = (
        f"import sys; sys.path.insert(0, {str(folder)!r}); import niodoo_lora_guard; "
        "assert not any(m.startswith(('niodoo_supervisor', 'vllm')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=60)


def test_changing_the_mode_restarts_vllm(tmp_path: Path) -> None:
    for old, new in (("log", "reject"), ("reject", "route"), ("route", "log")):
        running, reloaded = _config(tmp_path, old), _config(tmp_path, new)
        change = diff(
            running, reloaded, plan_launch(running, None, {}), plan_launch(reloaded, None, {})
        )
        assert change.needs_restart
        assert change.keys(KeyClass.RESTART)[0] == "lora.lora_name_field"


async def test_route_follows_live_adapter_changes(tmp_path: Path) -> None:
    a, b = (adapter_folder(tmp_path / name) for name in "ab")
    config = _config(tmp_path, "route", adapters={"a": a}, runtime_updates=True)
    plan = plan_launch(config, None, {})
    assert plan.lora_guard is not None
    write_guard(plan.lora_guard)
    vllm = FakeVllm(loaded={"a": a})
    live = LiveAdapters(config, plan, StatusBoard(), adapter_api(vllm), asyncio.Event())
    settings = tmp_path / "state" / "lora-guard" / "settings.json"
    result = await live.apply(AdapterChange(load={"b": b}))
    assert result.ok
    assert json.loads(settings.read_text())["adapters"] == ["a", "b"]
    settings.unlink()
    settings.mkdir()  # the next rewrite fails: said, and the change still stands
    with capture_logs() as logs:
        result = await live.apply(AdapterChange(unload={"b": b}))
    assert result.ok and list(live.serving) == ["a"]
    [failed] = [log for log in logs if log["event"] == "lora_guard_not_updated"]
    assert failed["adapters"] == ["a"] and failed["error"]


# --- the guard's log lines, as the rules read them ---------------------------------------------

H = "(APIServer pid=1) INFO 12-01 00:00:00 [niodoo_lora_guard.py:170] "
HOSTILE = "LoRA rank 99 is greater than max_lora_rank 16. EngineDeadError Killed process 1"


def _events(ruleset: RuleSet, text: str) -> list[tuple[str, dict[str, object]]]:
    scanner = ruleset.scanner()
    found = scanner.feed(text.encode()) + scanner.flush(final=True)
    return [(event.rule, event.details) for event in found]


def test_guard_lines_feed_only_the_guard_rules() -> None:
    user, errors = compile_user_rules(
        [{"name": "oom", "pattern": "Killed process", "severity": "error", "action": "log"}],
        "rules",
    )
    assert errors == []
    ruleset = RuleSet(user)
    lines = (
        f"{H}lora_name guard: routed to adapter 'alpha'\n"
        f"{H}lora_name guard: rejected (unknown_adapter) lora_name={HOSTILE!r}\n"
        f"{H}lora_name guard: rejected (conflicting_model) lora_name='a' model={HOSTILE!r}\n"
    )
    assert _events(ruleset, lines) == [
        ("lora_name_routed", {"adapter": "alpha"}),
        ("lora_name_rejected", {"reason": "unknown_adapter"}),
        ("lora_name_rejected", {"reason": "conflicting_model"}),
    ]
    # the same hostile text where vLLM's own words stand is still acted on
    assert [rule for rule, _ in _events(ruleset, f"{H}Killed process 1\n")] == ["oom"]
