"""plan_launch: config + installed vLLM -> argv, environment, secrets, logging config and the
resolved rank, in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from niodoo_supervisor.config.loader import Config, parse_config
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.install import VllmInstall
from niodoo_supervisor.launch.plan import (
    ASSUMED_VERSION,
    LOGGING_CONFIG_NAME,
    PlanError,
    plan_launch,
    vllm_environment,
)
from niodoo_supervisor.launch.render import REDACTED, plan_json, redacted_argv, redacted_env
from niodoo_supervisor.launch.vllm_logging import ignored_fields_logger_for, logging_config_for

SECRET = "sk-plan-test-0123456789"
BASE = "server: {python: /v/bin/python}\nmodel: {path: /models/m}\n"


def _install(version: str) -> VllmInstall:
    return VllmInstall("/v/bin/python", Version.parse(version), version, "vllm", "/v/lib/vllm")


def _config(tmp_path: Path, text: str = BASE, environ: dict[str, str] | None = None) -> Config:
    text += f"supervisor: {{state_dir: {tmp_path / 'state'}}}\n"
    config, problems = parse_config(text, base_dir=tmp_path, environ=environ or {})
    assert config is not None, [problem.format() for problem in problems]
    return config


def _adapter(path: Path, rank: int) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (path / "adapter_model.safetensors").write_bytes(b"\0")
    return path


def _auto(tmp_path: Path, *ranks: int) -> Config:
    adapters = ", ".join(
        f"{{name: a{i}, path: {_adapter(tmp_path / f'a{i}', rank)}}}"
        for i, rank in enumerate(ranks)
    )
    lora = f"lora: {{enabled: true, max_loras: {max(1, len(ranks))}, max_lora_rank: auto, adapters: [{adapters}]}}\n"
    return _config(tmp_path, BASE + lora)


def _flag(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- argv and the secret ------------------------------------------------------------------------


def test_the_api_key_reaches_only_the_environment_and_every_display_redacts_it(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{SECRET}\n")
    config = _config(tmp_path, BASE.replace("}\nmodel", f", api_key_file: {key_file}}}\nmodel"))
    plan = plan_launch(config, _install("0.32.0"), {})
    assert plan.argv[:5] == (
        "/v/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/m",
    )
    assert plan.api_key == SECRET and plan.env["VLLM_API_KEY"] == SECRET
    assert plan.secrets == (SECRET,)
    assert not any(SECRET in arg for arg in plan.argv)
    assert SECRET not in repr(plan)  # a plan in a log line or a traceback keeps its secret
    assert SECRET not in plan_json(plan) and redacted_env(plan)["VLLM_API_KEY"] == REDACTED


def test_an_api_key_in_extra_args_is_a_secret_the_displays_redact(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        BASE.replace("}\nmodel", ", extra_args: [--api-key=hunter2]}\nmodel"),
    )
    plan = plan_launch(config, _install("0.32.0"), {})
    assert plan.argv[-1] == "--api-key=hunter2"  # the operator's choice: it reaches vLLM
    assert plan.secrets == ("hunter2",)
    assert redacted_argv(plan)[-1] == f"--api-key={REDACTED}"


def test_an_unreadable_api_key_is_a_plan_error_naming_the_key(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE.replace("}\nmodel", ", api_key_env: NO_SUCH_KEY}\nmodel"))
    with pytest.raises(PlanError) as caught:
        plan_launch(config, _install("0.32.0"), {})
    assert caught.value.key == "server.api_key_env"
    assert "NO_SUCH_KEY is not set or empty" in caught.value.message


def test_a_plan_for_display_leaves_the_key_unread(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "api-key"  # render must not need to read it
    config = _config(tmp_path, BASE.replace("}\nmodel", f", api_key_file: {missing}}}\nmodel"))
    plan = plan_launch(config, _install("0.32.0"), {}, read_secret=False)
    assert plan.api_key is None and plan.secrets == ()
    assert redacted_env(plan)["VLLM_API_KEY"] == REDACTED  # shown where it goes


# --- the environment ----------------------------------------------------------------------------


def test_the_child_environment_drops_systemds_variables_and_adds_server_env(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, BASE.replace("}\nmodel", ", env: {MODE: x, PATH: /opt}}\nmodel"))
    plan = plan_launch(config, _install("0.32.0"), {})
    environ = {"PATH": "/bin", "HOME": "/h", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1"}
    child = plan.child_environment(environ)
    assert "NOTIFY_SOCKET" not in child and "WATCHDOG_USEC" not in child
    assert child["HOME"] == "/h" and child["PATH"] == "/opt" and child["MODE"] == "x"
    assert child["PYTHONUNBUFFERED"] == "1"
    # vLLM's version and --help probes see the same, without what only a launch adds.
    probe = vllm_environment(environ, config.server.env)
    assert {key: child[key] for key in probe} == probe
    assert set(child) - set(probe) == {"PYTHONUNBUFFERED", "VLLM_LOGGING_CONFIG_PATH"}


# --- max_lora_rank ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "ranks", "expected"),
    [
        ("0.32.0", (1,), 1),
        ("0.11.0", (1,), 8),  # no rank 1 before 0.12
        ("0.12.0", (1,), 1),
        ("0.32.0", (8, 12), 16),
        ("0.32.0", (300,), 320),
        (None, (1,), 1),  # not known: the current ranks
    ],
)
def test_auto_is_the_smallest_rank_this_vllm_accepts_covering_every_adapter(
    tmp_path: Path, version: str | None, ranks: tuple[int, ...], expected: int
) -> None:
    plan = plan_launch(_auto(tmp_path, *ranks), _install(version) if version else None, {})
    assert plan.max_lora_rank == expected
    assert _flag(plan.argv, "--max-lora-rank") == str(expected)


def test_a_configured_rank_is_rendered_as_it_is(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE + "lora: {enabled: true, max_lora_rank: 32}\n")
    plan = plan_launch(config, _install("0.32.0"), {})
    assert plan.max_lora_rank == 32 and _flag(plan.argv, "--max-lora-rank") == "32"
    assert plan_launch(_config(tmp_path, BASE), _install("0.32.0"), {}).max_lora_rank is None


def test_a_configured_rank_the_installed_vllm_refuses_is_a_plan_error(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE + "lora: {enabled: true, max_lora_rank: 1}\n")
    with pytest.raises(PlanError, match=r"vLLM 0\.11\.0 does not accept rank 1"):
        plan_launch(config, _install("0.11.0"), {})


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ((), "auto cannot be resolved: no adapters are listed"),
        ((1024,), "auto cannot be resolved: the largest adapter rank 1024 is above vLLM's maximum 512"),
    ],
)  # fmt: skip
def test_auto_that_cannot_be_sized_is_a_plan_error(
    tmp_path: Path, ranks: tuple[int, ...], message: str
) -> None:
    config = (
        _auto(tmp_path, *ranks)
        if ranks
        else _config(tmp_path, BASE + "lora: {enabled: true, max_lora_rank: auto}\n")
    )
    with pytest.raises(PlanError) as caught:
        plan_launch(config, _install("0.32.0"), {})
    assert (caught.value.key, caught.value.message) == ("lora.max_lora_rank", message)


def test_auto_with_an_unreadable_adapter_names_it(tmp_path: Path) -> None:
    config = _auto(tmp_path, 8)
    (tmp_path / "a0" / "adapter_config.json").unlink()
    with pytest.raises(
        PlanError, match=r"auto cannot be resolved: .*adapter_config\.json is missing"
    ):
        plan_launch(config, _install("0.32.0"), {})


# --- vLLM's logging config ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.30.0", "0.31.0", "0.15.1"])
def test_the_supervisors_logging_config_is_written_to_the_state_folder_for_this_vllm(
    tmp_path: Path, version: str
) -> None:
    plan = plan_launch(_config(tmp_path), _install(version), {})
    assert plan.logging_config_path == tmp_path / "state" / LOGGING_CONFIG_NAME
    assert plan.env["VLLM_LOGGING_CONFIG_PATH"] == str(plan.logging_config_path)
    assert plan.logging_config == logging_config_for(Version.parse(version))
    assert plan.logging_config is not None
    assert ignored_fields_logger_for(Version.parse(version)) in plan.logging_config["loggers"]
    assert plan.vllm_version == version


def test_an_unknown_vllm_gets_the_logging_config_of_the_assumed_version(tmp_path: Path) -> None:
    plan = plan_launch(_config(tmp_path), None, {})
    assert plan.logging_config == logging_config_for(ASSUMED_VERSION)
    assert plan.vllm_version is None


def test_the_operators_logging_config_is_named_and_not_written(tmp_path: Path) -> None:
    own = tmp_path / "logging.json"
    config = _config(tmp_path, BASE.replace("}\nmodel", f", logging_config: {own}}}\nmodel"))
    plan = plan_launch(config, _install("0.32.0"), {})
    assert plan.logging_config is None
    assert plan.logging_config_path == own
    assert plan.env["VLLM_LOGGING_CONFIG_PATH"] == str(own)
