"""The reload diff: each changed key with what it takes to apply (restart vLLM, apply in the
supervisor at once, or only at the supervisor's own restart), old -> new with every secret
redacted. Real configs and real launch plans."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from niodoo_supervisor.config.loader import ALL_FIELDS, Config, parse_config
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.render import REDACTED
from niodoo_supervisor.supervise.reload_diff import ConfigDiff, KeyClass, class_of, diff

SECRET = "sk-reload-test-0123456789"
SERVER = "port: 8000, api_key_env: API_KEY"


def _config(
    tmp_path: Path,
    *,
    server: str = SERVER,
    supervisor: str = "",
    extra: str = "",
    environ: dict[str, str] | None = None,
) -> Config:
    more = f", {supervisor}" if supervisor else ""
    text = (
        f"server: {{python: /v/bin/python, {server}}}\nmodel: {{path: /models/m}}\n{extra}"
        f"supervisor: {{state_dir: {tmp_path / 'state'}{more}}}\n"
    )
    config, problems = parse_config(text, base_dir=tmp_path, environ=environ or {})
    assert config is not None, [problem.format() for problem in problems]
    return config


def _diff(
    tmp_path: Path,
    old: dict[str, str],
    new: dict[str, str],
    old_key: str = SECRET,
    new_key: str = SECRET,
) -> ConfigDiff:
    old_environ, new_environ = {"API_KEY": old_key}, {"API_KEY": new_key}
    running = _config(tmp_path, environ=old_environ, **old)
    reloaded = _config(tmp_path, environ=new_environ, **new)
    return diff(
        running,
        reloaded,
        plan_launch(running, None, old_environ),
        plan_launch(reloaded, None, new_environ),
    )


def _described(change: ConfigDiff) -> list[str]:
    return [each.describe() for each in change.changes]


def test_an_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    change = _diff(tmp_path, {}, {})
    assert change.unchanged and not change.needs_restart and change.changes == ()


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("server.port", KeyClass.RESTART),
        ("server.env", KeyClass.RESTART),
        ("server.extra_args", KeyClass.RESTART),
        ("model.path", KeyClass.RESTART),
        ("engine.max_num_seqs", KeyClass.RESTART),
        ("lora.adapters", KeyClass.RESTART),  # live only with lora.runtime_updates on both sides
        ("rules", KeyClass.RESTART),  # vLLM's log pump compiles them at the start
        ("supervisor.state_dir", KeyClass.RESTART),  # the logging config lives there
        ("supervisor.startup_timeout", KeyClass.SUPERVISOR),
        ("supervisor.health.interval", KeyClass.SUPERVISOR),
        ("supervisor.health.timeout", KeyClass.SUPERVISOR),
        ("supervisor.health.failure_threshold", KeyClass.SUPERVISOR),
        ("supervisor.restart.max_starts", KeyClass.SUPERVISOR),
        ("supervisor.stop.grace_period", KeyClass.SUPERVISOR),
        ("supervisor.log.crash_report_lines", KeyClass.SUPERVISOR),
        ("maintenance.windows", KeyClass.SUPERVISOR),  # no restart to change when restarts go
        ("supervisor.log.path", KeyClass.DAEMON),
        ("supervisor.log.echo", KeyClass.DAEMON),
        ("supervisor.log.format", KeyClass.DAEMON),
    ],
)
def test_each_key_has_its_class(key: str, kind: KeyClass) -> None:
    assert key in {field.key for field in ALL_FIELDS}
    assert class_of(key) is kind


def test_no_key_applies_live_yet_and_every_vllm_option_restarts() -> None:
    assert all(class_of(field.key) is not KeyClass.LIVE for field in ALL_FIELDS)
    assert all(
        class_of(field.key) is KeyClass.RESTART for field in ALL_FIELDS if field.flag is not None
    )


def test_a_changed_port_restarts_and_names_the_key_with_old_and_new(tmp_path: Path) -> None:
    change = _diff(tmp_path, {}, {"server": SERVER.replace("8000", "8001")})
    assert change.needs_restart
    assert _described(change) == ["server.port: 8000 -> 8001"]
    assert change.restart_reason() == "config changed: server.port"


def test_an_added_adapter_restarts_vllm_without_runtime_updates(tmp_path: Path) -> None:
    lora = "lora: {{enabled: true, max_lora_rank: 16, adapters: [{adapters}]}}\n"
    one = lora.format(adapters="{name: a, path: /ad/a}")
    two = lora.format(adapters="{name: a, path: /ad/a}, {name: b, path: /ad/b}")
    change = _diff(tmp_path, {"extra": one}, {"extra": two})
    assert change.keys(KeyClass.RESTART) == ["lora.adapters"]
    assert _described(change) == ["lora.adapters: [a=/ad/a] -> [a=/ad/a, b=/ad/b]"]


def test_probe_settings_apply_without_a_restart(tmp_path: Path) -> None:
    change = _diff(
        tmp_path,
        {"supervisor": "health: {interval: 10}"},
        {"supervisor": "health: {interval: 2, failure_threshold: 5}"},
    )
    assert not change.needs_restart and not change.unchanged
    assert change.keys(KeyClass.SUPERVISOR) == [
        "supervisor.health.interval",
        "supervisor.health.failure_threshold",
    ]
    assert _described(change) == [
        "supervisor.health.interval: 10.0 -> 2.0",
        "supervisor.health.failure_threshold: 3 -> 5",
    ]


def test_a_new_api_key_restarts_and_never_shows_the_key(tmp_path: Path) -> None:
    change = _diff(tmp_path, {}, {}, new_key=SECRET + "-new")
    assert change.needs_restart
    assert _described(change) == [f"vLLM environment VLLM_API_KEY: {REDACTED} -> {REDACTED}"]
    assert SECRET not in repr(change)


def test_secrets_in_extra_args_and_env_are_redacted(tmp_path: Path) -> None:
    change = _diff(
        tmp_path,
        {"server": SERVER + ", env: {HF_TOKEN: hf-old, MODE: a}"},
        {
            "server": SERVER
            + f", env: {{HF_TOKEN: hf-new, MODE: b}}, extra_args: [--api-key, {SECRET}]"
        },
    )
    assert _described(change) == [
        f"server.env.HF_TOKEN: {REDACTED} -> {REDACTED}",
        "server.env.MODE: a -> b",
        f"server.extra_args: [] -> [--api-key, {REDACTED}]",
    ]
    assert SECRET not in repr(change) and "hf-new" not in repr(change)


def test_a_plan_change_no_key_explains_is_named(tmp_path: Path) -> None:
    config = _config(tmp_path, environ={"API_KEY": SECRET})
    plan = plan_launch(config, None, {"API_KEY": SECRET})
    upgraded: LaunchPlan = replace(
        plan, argv=(*plan.argv, "--max-lora-rank", "32"), vllm_version="0.33.0"
    )
    change = diff(config, config, plan, upgraded)
    assert _described(change) == [
        "vLLM command line: (absent) -> --max-lora-rank 32",
        "installed vLLM: unknown -> 0.33.0",
    ]
    assert change.restart_reason() == "config changed: vLLM command line, installed vLLM"


def test_daemon_keys_do_not_restart_vllm(tmp_path: Path) -> None:
    change = _diff(
        tmp_path, {"supervisor": "log: {echo: true}"}, {"supervisor": "log: {echo: false}"}
    )
    assert not change.needs_restart
    assert change.keys(KeyClass.DAEMON) == ["supervisor.log.echo"]
