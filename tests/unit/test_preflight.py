"""Preflight: what `check` and `run` find on the machine before vLLM spends minutes loading.

vLLM is never imported: `server.python` is this interpreter with the fake vLLM package
(tests/fakevllm, version 0.32.0) or a one-line package written to tmp_path on its PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from niodoo_supervisor.config.loader import Config, load_config
from niodoo_supervisor.config.problems import Problem
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.adapters import (
    AdapterReadError,
    read_adapter,
    same_base_model,
    smallest_rank_at_least,
)
from niodoo_supervisor.launch.install import (
    VllmProbeError,
    cache_dir,
    inspect_vllm,
    vllm_flags,
)
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.preflight import PreflightOptions, PreflightResult, preflight
from niodoo_supervisor.launch.render import REDACTED, redacted_argv, redacted_env

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"
_NO_PORT_NO_FLAGS = PreflightOptions(check_port=False, check_flags=False)


# --- helpers ------------------------------------------------------------------------------------


def _model_dir(root: Path, name: str = "base") -> Path:
    path = root / "models" / name
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    return path


def _adapter(
    path: Path,
    r: object = 8,
    *,
    rank_pattern: object = None,
    peft_type: str | None = "LORA",
    base: str | None = None,
    weights: str | None = "adapter_model.safetensors",
) -> Path:
    path.mkdir(parents=True)
    config: dict[str, Any] = {"r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    if peft_type is not None:
        config["peft_type"] = peft_type
    if rank_pattern is not None:
        config["rank_pattern"] = rank_pattern
    if base is not None:
        config["base_model_name_or_path"] = base
    (path / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        (path / weights).write_bytes(b"\0")
    return path


def _fake_vllm(root: Path, version: str) -> Path:
    """A `vllm` package that has only a version (no API server); its folder goes on PYTHONPATH."""
    site = root / f"fake-vllm-{version}"
    package = site / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    return site


def _environ(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def _document(tmp_path: Path, *, site: Path = FAKE_VLLM) -> dict[str, Any]:
    return {
        "server": {"python": sys.executable, "env": {"PYTHONPATH": str(site)}},
        "model": {"path": str(_model_dir(tmp_path))},
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }


def _load(tmp_path: Path, document: dict[str, Any], environ: dict[str, str]) -> Config:
    path = tmp_path / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1_000_000))
    config, problems = load_config(path, environ)
    assert config is not None, [problem.format() for problem in problems]
    return config


def _preflight(
    tmp_path: Path,
    document: dict[str, Any],
    *,
    environ: dict[str, str] | None = None,
    options: PreflightOptions | None = None,
) -> PreflightResult:
    environ = environ if environ is not None else _environ(tmp_path)
    config = _load(tmp_path, document, environ)
    return preflight(config, environ, options or PreflightOptions(check_port=False))


def _planned(
    tmp_path: Path,
    document: dict[str, Any],
    *,
    environ: dict[str, str] | None = None,
    options: PreflightOptions | None = None,
) -> tuple[PreflightResult, LaunchPlan]:
    """Preflight, then the plan: the two steps of `run`, `render` and `check`."""
    environ = environ if environ is not None else _environ(tmp_path)
    config = _load(tmp_path, document, environ)
    result = preflight(config, environ, options or PreflightOptions(check_port=False))
    assert result.ok, [problem.format() for problem in result.problems]
    return result, plan_launch(config, result.install, environ)


def _at(result: PreflightResult, path: str) -> list[Problem]:
    return [problem for problem in result.problems if problem.path == path]


def _only(result: PreflightResult, path: str) -> Problem:
    found = _at(result, path)
    assert len(found) == 1, [problem.format() for problem in result.problems]
    return found[0]


def _lora(adapters: list[dict[str, str]], max_lora_rank: object = 16) -> dict[str, Any]:
    return {
        "enabled": True,
        "max_loras": max(1, len(adapters)),
        "max_lora_rank": max_lora_rank,
        "adapters": adapters,
    }


# --- adapters.py --------------------------------------------------------------------------------


def test_read_adapter_reports_rank_type_and_base(tmp_path: Path) -> None:
    path = _adapter(tmp_path / "a", 16, base="Qwen/Qwen2.5-7B-Instruct")
    info = read_adapter(path)
    assert (info.rank, info.peft_type, info.base_model) == (16, "LORA", "Qwen/Qwen2.5-7B-Instruct")


def test_read_adapter_counts_rank_pattern_values(tmp_path: Path) -> None:
    info = read_adapter(_adapter(tmp_path / "a", 8, rank_pattern={"q_proj": 64, "v_proj": 4}))
    assert info.rank == 64
    assert read_adapter(_adapter(tmp_path / "b", 32, rank_pattern={"v_proj": 4})).rank == 32


def test_read_adapter_accepts_bin_weights_and_lowercase_type(tmp_path: Path) -> None:
    info = read_adapter(_adapter(tmp_path / "a", peft_type="lora", weights="adapter_model.bin"))
    assert info.rank == 8 and info.base_model is None


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("no_dir", "is not a directory"),
        ("no_config", "adapter_config.json is missing; is this a PEFT adapter folder?"),
        ("bad_json", "adapter_config.json is not valid JSON"),
        ("not_object", "must hold a JSON object"),
        ("ia3", "peft_type is 'IA3', vLLM serves only LORA adapters"),
        ("no_type", "peft_type is 'missing'"),
        ("bad_rank", "r and rank_pattern values must be positive integers"),
        ("bool_rank", "r and rank_pattern values must be positive integers"),
        ("bad_pattern", "rank_pattern values must be positive integers"),
        ("pattern_list", "rank_pattern must be an object"),
        ("no_weights", "has no adapter_model.safetensors"),
    ],
)
def test_read_adapter_refuses_unusable_folders(tmp_path: Path, setup: str, expected: str) -> None:
    path = tmp_path / "adapter"
    if setup == "no_config":
        path.mkdir()
    elif setup == "bad_json":
        _adapter(path)
        (path / "adapter_config.json").write_text('{"r": 8,')
    elif setup == "not_object":
        _adapter(path)
        (path / "adapter_config.json").write_text("[8]")
    elif setup == "ia3":
        _adapter(path, peft_type="IA3")
    elif setup == "no_type":
        _adapter(path, peft_type=None)
    elif setup == "bad_rank":
        _adapter(path, "8")
    elif setup == "bool_rank":
        _adapter(path, True)
    elif setup == "bad_pattern":
        _adapter(path, 8, rank_pattern={"q_proj": 0})
    elif setup == "pattern_list":
        _adapter(path, 8, rank_pattern=[64])
    elif setup == "no_weights":
        _adapter(path, weights=None)
    with pytest.raises(AdapterReadError) as caught:
        read_adapter(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("rank", "expected"),
    [(1, 1), (2, 8), (8, 8), (9, 16), (33, 64), (300, 320), (512, 512), (513, None)],
)
def test_smallest_rank_at_least(rank: int, expected: int | None) -> None:
    assert smallest_rank_at_least(rank) == expected


@pytest.mark.parametrize(
    ("adapter_base", "served", "model_path", "expected"),
    [
        ("/models/Qwen2.5-7B", "tiny", "/models/Qwen2.5-7B", True),
        ("tiny", "tiny", "/models/base", True),
        ("Qwen/Qwen2.5-7B-Instruct", "q", "/models/Qwen2.5-7B-Instruct", True),
        ("Qwen/Qwen2.5-7B-Instruct", "q", "/models/Qwen2.5-7B-Instruct-AWQ", True),
        ("Qwen/Qwen2.5-7B-Instruct", "q", "/m/Qwen2.5-7B-Instruct-GPTQ-Int4", True),
        ("/train/Qwen2.5-7B-Instruct/", "q", "Qwen/Qwen2.5-7B-Instruct-awq", True),
        ("meta-llama/Llama-3.1-8B", "q", "/models/Qwen2.5-7B-Instruct-AWQ", False),
        ("Qwen/Qwen2.5-7B", "q", "/models/Qwen2.5-7B-Instruct", False),
        ("", "q", "/models/Qwen2.5-7B-Instruct", None),
    ],
)
def test_same_base_model(
    adapter_base: str, served: str, model_path: str, expected: bool | None
) -> None:
    assert same_base_model(adapter_base, served, model_path) is expected


def test_same_base_model_resolves_symlinked_paths(tmp_path: Path) -> None:
    real = _model_dir(tmp_path, "real-model")
    link = tmp_path / "current"
    link.symlink_to(real)
    assert same_base_model(str(link), "served", str(real)) is True


# --- preflight: adapters and ranks --------------------------------------------------------------


def test_clean_config_has_no_problems_and_renders(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "adapters" / "a", 8)
    document = _document(tmp_path)
    document["lora"] = _lora([{"name": "a", "path": str(adapter)}])
    # The adapter says nothing about its base model: exactly one warning, nothing else.
    result, plan = _planned(tmp_path, document)
    assert [problem.path for problem in result.problems] == ["lora.adapters[0]"]
    assert result.install is not None and result.install.version == Version(0, 32, 0)
    assert plan.max_lora_rank == 16
    argv = list(plan.argv)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--lora-modules") + 1] == f"a={adapter}"


def test_adapter_folder_missing_is_an_error_on_its_path_and_line(tmp_path: Path) -> None:
    good = _adapter(tmp_path / "adapters" / "good", 8, base="x")
    document = _document(tmp_path)
    document["lora"] = _lora(
        [
            {"name": "good", "path": str(good)},
            {"name": "gone", "path": str(tmp_path / "adapters" / "gone")},
        ]
    )
    result = _preflight(tmp_path, document)
    problem = _only(result, "lora.adapters[1].path")
    assert problem.is_error and "is not a directory" in problem.message
    assert not result.ok
    # The line is the one of the adapter's own `path:` key, not of `adapters:`.
    text = (tmp_path / "niodoo.yaml").read_text().splitlines()
    assert problem.line is not None
    assert text[problem.line - 1].strip() == f"path: {tmp_path / 'adapters' / 'gone'}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "adapter_config.json is missing"),
        ("{not json", "is not valid JSON"),
        ('{"peft_type": "PREFIX_TUNING", "r": 8}', "vLLM serves only LORA adapters"),
    ],
)
def test_unreadable_adapter_config_is_an_error(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = _adapter(tmp_path / "adapters" / "a")
    if content is None:
        (path / "adapter_config.json").unlink()
    else:
        (path / "adapter_config.json").write_text(content)
    document = _document(tmp_path)
    document["lora"] = _lora([{"name": "a", "path": str(path)}])
    result = _preflight(tmp_path, document)
    problem = _only(result, "lora.adapters[0].path")
    assert problem.is_error and expected in problem.message
    assert not result.ok


def test_rank_above_max_lora_rank_names_rank_limit_and_fix(tmp_path: Path) -> None:
    path = _adapter(tmp_path / "adapters" / "big", 8, rank_pattern={"q_proj": 64}, base="x")
    document = _document(tmp_path)
    document["lora"] = _lora([{"name": "big", "path": str(path)}], max_lora_rank=16)
    result = _preflight(tmp_path, document)
    errors = [problem for problem in result.problems if problem.is_error]
    assert len(errors) == 1, [problem.format() for problem in result.problems]
    message = errors[0].format()
    assert errors[0].path == "lora.adapters[0]"
    assert "'big' has rank 64, above lora.max_lora_rank 16" in message
    assert "LoRA rank 64 is greater than max_lora_rank 16." in message
    assert "set lora.max_lora_rank to 64 (or auto)" in message
    assert not result.ok


@pytest.mark.parametrize(
    ("ranks", "expected"),
    [
        ([(8, None)], 8),
        ([(8, None), (12, None)], 16),
        ([(4, None)], 8),
        ([(32, None), (8, None)], 32),
        ([(8, {"q_proj": 33})], 64),
        ([(16, {"o_proj": 300})], 320),
    ],
)
def test_auto_max_lora_rank_is_the_smallest_accepted_rank_covering_every_adapter(
    tmp_path: Path, ranks: list[tuple[int, dict[str, int] | None]], expected: int
) -> None:
    adapters = [
        {"name": f"a{i}", "path": str(_adapter(tmp_path / f"a{i}", r, rank_pattern=p, base="x"))}
        for i, (r, p) in enumerate(ranks)
    ]
    document = _document(tmp_path)
    document["lora"] = _lora(adapters, max_lora_rank="auto")
    _, plan = _planned(tmp_path, document)
    assert plan.max_lora_rank == expected
    argv = list(plan.argv)
    assert argv[argv.index("--max-lora-rank") + 1] == str(expected)


def test_auto_max_lora_rank_above_vllms_largest_is_an_error(tmp_path: Path) -> None:
    path = _adapter(tmp_path / "huge", 1024, base="x")
    document = _document(tmp_path)
    document["lora"] = _lora([{"name": "huge", "path": str(path)}], max_lora_rank="auto")
    result = _preflight(tmp_path, document)
    problem = _only(result, "lora.max_lora_rank")
    assert problem.is_error
    assert "largest adapter rank 1024 is above vLLM's maximum 512" in problem.message
    assert not result.ok


def test_auto_without_adapters_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["lora"] = {"enabled": True, "max_lora_rank": "auto"}
    result = _preflight(tmp_path, document)
    assert "no adapters are listed" in _only(result, "lora.max_lora_rank").message
    assert not result.ok


def test_auto_respects_the_ranks_an_older_vllm_accepts(tmp_path: Path) -> None:
    # vLLM before 0.12 has no rank 1: auto must choose 8 for a rank-1 adapter there.
    path = _adapter(tmp_path / "tiny-rank", 1, base="x")
    document = _document(tmp_path, site=_fake_vllm(tmp_path, "0.11.0"))
    document["lora"] = _lora([{"name": "t", "path": str(path)}], max_lora_rank="auto")
    _, plan = _planned(tmp_path, document, options=_NO_PORT_NO_FLAGS)
    assert plan.max_lora_rank == 8
    argv = list(plan.argv)
    assert argv[argv.index("--max-lora-rank") + 1] == "8"


def test_explicit_rank_1_on_vllm_before_0_12_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path, site=_fake_vllm(tmp_path, "0.11.0"))
    document["lora"] = {"enabled": True, "max_lora_rank": 1}
    result = _preflight(tmp_path, document, options=_NO_PORT_NO_FLAGS)
    problem = _only(result, "lora.max_lora_rank")
    assert problem.is_error and "vLLM 0.11.0 does not accept rank 1" in problem.message
    assert problem.fix.startswith("use one of 8, 16")


@pytest.mark.parametrize(
    "base",
    [
        "{model}",  # the very folder that is served
        "Qwen/Qwen2.5-7B-Instruct",  # hub id of the unquantized model, folder has -AWQ
        "/elsewhere/Qwen2.5-7B-Instruct",  # another copy of the same model
    ],
)
def test_adapter_base_model_that_matches_gives_no_warning(tmp_path: Path, base: str) -> None:
    document = _document(tmp_path)
    model = _model_dir(tmp_path, "Qwen2.5-7B-Instruct-AWQ")
    document["model"]["path"] = str(model)
    path = _adapter(tmp_path / "a", 8, base=base.format(model=model))
    document["lora"] = _lora([{"name": "a", "path": str(path)}])
    result = _preflight(tmp_path, document)
    assert result.problems == []


def test_adapter_trained_on_another_model_is_a_warning_naming_both(tmp_path: Path) -> None:
    document = _document(tmp_path)
    model = _model_dir(tmp_path, "Qwen2.5-7B-Instruct-AWQ")
    document["model"]["path"] = str(model)
    path = _adapter(tmp_path / "a", 8, base="meta-llama/Llama-3.1-8B-Instruct")
    document["lora"] = _lora([{"name": "a", "path": str(path)}])
    result = _preflight(tmp_path, document)
    problem = _only(result, "lora.adapters[0]")
    assert not problem.is_error and result.ok
    assert "'meta-llama/Llama-3.1-8B-Instruct'" in problem.message
    assert str(model) in problem.message


def test_adapter_without_base_model_is_a_warning(tmp_path: Path) -> None:
    document = _document(tmp_path)
    path = _adapter(tmp_path / "a", 8)
    document["lora"] = _lora([{"name": "a", "path": str(path)}])
    result = _preflight(tmp_path, document)
    problem = _only(result, "lora.adapters[0]")
    assert not problem.is_error
    assert "adapter 'a' does not say which base model it was trained on" in problem.message


# --- preflight: model path and API key ----------------------------------------------------------


def test_missing_model_path_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["model"]["path"] = str(tmp_path / "no-such-model")
    result = _preflight(tmp_path, document)
    problem = _only(result, "model.path")
    assert problem.is_error and f"{tmp_path / 'no-such-model'} does not exist" in problem.message
    text = (tmp_path / "niodoo.yaml").read_text().splitlines()
    assert problem.line is not None and text[problem.line - 1].strip().startswith("path: ")


def test_model_folder_without_config_json_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path)
    (Path(document["model"]["path"]) / "config.json").unlink()
    result = _preflight(tmp_path, document)
    assert "has no config.json" in _only(result, "model.path").message


def test_hub_id_model_is_only_a_warning(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["model"]["path"] = "Qwen/Qwen2.5-0.5B-Instruct"
    result = _preflight(tmp_path, document)
    problem = _only(result, "model.path")
    assert not problem.is_error and "is not a local path" in problem.message
    assert result.ok


def test_api_key_env_unset_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["api_key_env"] = "NIODOO_TEST_KEY"
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.api_key_env")
    assert problem.is_error and "NIODOO_TEST_KEY is not set or empty" in problem.message
    assert not result.ok


def test_api_key_env_reaches_vllm_only_in_its_environment(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["api_key_env"] = "NIODOO_TEST_KEY"
    environ = {**_environ(tmp_path), "NIODOO_TEST_KEY": "k-123"}
    result, plan = _planned(tmp_path, document, environ=environ)
    assert result.problems == [] and "k-123" not in repr(result)  # preflight keeps no secret
    assert plan.api_key == "k-123" and plan.env["VLLM_API_KEY"] == "k-123"
    assert not any("k-123" in arg for arg in plan.argv)
    assert redacted_env(plan)["VLLM_API_KEY"] == REDACTED


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read"), ("", "is empty"), ("\n  \n", "is empty")],
)
def test_api_key_file_missing_or_empty_is_an_error(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    key_file = tmp_path / "api-key"
    if content is not None:
        key_file.write_text(content)
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(key_file)
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.api_key_file")
    assert problem.is_error and expected in problem.message and str(key_file) in problem.message
    assert not result.ok


def test_api_key_file_first_line_is_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("  s3cret  \nsecond line\n")
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(key_file)
    result, plan = _planned(tmp_path, document)
    assert result.problems == [] and plan.api_key == "s3cret"


# --- preflight: the port ------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_port_in_use_names_the_process_holding_it(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    document = _document(tmp_path)
    document["server"]["port"] = port
    result = _preflight(tmp_path, document, options=PreflightOptions(check_flags=False))
    problem = _only(result, "server.port")
    assert problem.is_error
    name = psutil.Process(os.getpid()).name()
    assert f"port {port} on 127.0.0.1 is already in use by {name} (pid {os.getpid()})" in (
        problem.message
    )
    assert not result.ok


def test_free_port_is_not_a_problem(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: free again once closed
    document = _document(tmp_path)
    document["server"]["port"] = port
    result = _preflight(tmp_path, document, options=PreflightOptions(check_flags=False))
    assert _at(result, "server.port") == []


def test_address_not_of_this_machine_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["host"] = "192.0.2.1"  # TEST-NET-1: never a local address
    document["server"]["api_key_env"] = "K"
    environ = {**_environ(tmp_path), "K": "k"}
    result = _preflight(
        tmp_path, document, environ=environ, options=PreflightOptions(check_flags=False)
    )
    problem = _only(result, "server.host")
    assert problem.is_error and "could not listen on 192.0.2.1" in problem.message


# --- preflight: the installed vLLM --------------------------------------------------------------


def test_fake_vllm_is_inspected(tmp_path: Path) -> None:
    install = inspect_vllm(sys.executable, {**_environ(tmp_path), "PYTHONPATH": str(FAKE_VLLM)})
    assert install.version == Version(0, 32, 0) and install.version_text == "0.32.0"
    assert install.distribution is None  # the fake is a plain folder, not an installed wheel
    assert Path(install.package_dir) == FAKE_VLLM / "vllm"


@pytest.mark.parametrize("value", [4, 0])
def test_flag_removed_in_the_installed_vllm_is_an_error_naming_versions(
    tmp_path: Path, value: int
) -> None:
    # 0 is a value too: it is rendered as `--swap-space 0`, which vLLM 0.32 would refuse.
    document = _document(tmp_path)
    document["engine"] = {"swap_space": value}
    result = _preflight(tmp_path, document)
    problem = _only(result, "engine.swap_space")
    assert problem.is_error
    assert "--swap-space is not in the installed vLLM 0.32.0" in problem.message
    assert "removed in 0.18.0" in problem.message
    assert not result.ok


def test_flag_newer_than_the_installed_vllm_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path, site=_fake_vllm(tmp_path, "0.15.1"))
    document["server"]["shutdown_timeout"] = 0
    document["lora"] = {"enabled": True, "target_modules": ["q_proj"]}
    result = _preflight(tmp_path, document, options=_NO_PORT_NO_FLAGS)
    modules = _only(result, "lora.target_modules")
    assert "--lora-target-modules is not in the installed vLLM 0.15.1" in modules.message
    assert "vLLM 0.20.0 and later" in modules.message
    timeout = _only(result, "server.shutdown_timeout")
    assert "--shutdown-timeout is not in the installed vLLM 0.15.1" in timeout.message


def test_empty_list_of_a_missing_flag_is_not_an_error(tmp_path: Path) -> None:
    # An empty list is not rendered, so the vLLM lacking the flag does not matter.
    document = _document(tmp_path, site=_fake_vllm(tmp_path, "0.15.1"))
    document["lora"] = {"enabled": True, "target_modules": []}
    result = _preflight(tmp_path, document, options=_NO_PORT_NO_FLAGS)
    assert result.problems == []


@pytest.mark.parametrize("version", ["0.9.2", "0.40.0"])
def test_vllm_outside_known_versions_is_a_warning(tmp_path: Path, version: str) -> None:
    document = _document(tmp_path, site=_fake_vllm(tmp_path, version))
    result = _preflight(tmp_path, document, options=_NO_PORT_NO_FLAGS)
    problem = _only(result, "server.python")
    assert not problem.is_error
    assert f"vLLM {version} is outside the versions niodoo-supervisor knows" in problem.message


def test_missing_interpreter_is_an_error_naming_server_python(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["python"] = str(tmp_path / "venv" / "bin" / "python")
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.python")
    assert problem.is_error and "does not exist" in problem.message
    assert "server.python: " in problem.format()
    assert result.install is None and not result.ok


def test_interpreter_without_vllm_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty-site"
    empty.mkdir()
    document = _document(tmp_path, site=empty)
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.python")
    assert problem.is_error and f"vLLM is not installed for {sys.executable}" in problem.message


def test_unknown_extra_flag_is_an_error(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["extra_args"] = ["--enable-prefix-caching", "--no-such-flag=3"]
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.extra_args")
    assert problem.is_error
    assert "--no-such-flag is not a flag of the installed vLLM 0.32.0" in problem.message
    # The flag list was cached in the cache folder named by the environment, nowhere else.
    assert list((tmp_path / "cache" / "niodoo-supervisor").glob("vllm-flags-*.json"))


def test_known_extra_flags_pass(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["extra_args"] = ["--enable-prefix-caching", "--no-enforce-eager"]
    result, plan = _planned(tmp_path, document)
    assert result.problems == []
    assert plan.argv[-2:] == ("--enable-prefix-caching", "--no-enforce-eager")


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--max-model-len=512"], "model.max_model_len"),
        (["--max-model-len", "512"], "model.max_model_len"),
        (["--port", "9000"], "server.port"),
        (["--host=0.0.0.0"], "server.host"),
        (["--model", "/other"], "model.path"),
        (["--seed", "1"], "engine.seed"),  # engine.seed: 0 is rendered too
    ],
)
def test_extra_flag_duplicating_a_rendered_flag_is_an_error(
    tmp_path: Path, extra: list[str], key: str
) -> None:
    document = _document(tmp_path)
    document["model"]["max_model_len"] = 256
    document["engine"] = {"seed": 0}
    document["server"]["extra_args"] = extra
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.extra_args")
    assert problem.is_error
    assert f"{extra[0].split('=')[0]} is also rendered from {key}" in problem.message
    assert problem.fix == f"set it only as {key}"


def test_extra_flag_with_its_own_unset_key_is_a_warning(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["extra_args"] = ["--max-num-seqs", "8"]
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.extra_args")
    assert not problem.is_error and "prefer engine.max_num_seqs" in problem.fix


def test_api_key_in_extra_args_is_a_warning(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["extra_args"] = ["--api-key", "visible"]
    result, plan = _planned(tmp_path, document)
    problem = _only(result, "server.extra_args")
    assert not problem.is_error
    assert "visible to every user in `ps`" in problem.message
    assert "visible" in plan.argv and "visible" not in redacted_argv(plan)


@pytest.mark.parametrize("mode", ["reject", "route"])
def test_api_key_in_extra_args_is_an_error_with_the_lora_name_guard(
    tmp_path: Path, mode: str
) -> None:
    # vLLM takes --api-key over VLLM_API_KEY, the only key the guard reads: the guard would
    # answer requests vLLM refuses, naming the adapters.
    document = _document(tmp_path)
    document["server"]["extra_args"] = ["--api-key=visible"]
    document["lora"] = {"enabled": True, "lora_name_field": mode}
    problem = _only(_preflight(tmp_path, document), "server.extra_args")
    assert problem.is_error
    assert "the lora_name guard cannot see it" in problem.message
    assert problem.fix == "use server.api_key_file or server.api_key_env"


def test_unlistable_flags_are_a_warning(tmp_path: Path) -> None:
    # A vllm package without the API server module: --help fails, extra_args stay unchecked.
    document = _document(tmp_path, site=_fake_vllm(tmp_path, "0.32.0"))
    document["server"]["extra_args"] = ["--enable-prefix-caching"]
    result = _preflight(tmp_path, document)
    problem = _only(result, "server.extra_args")
    assert not problem.is_error
    assert "cannot list the installed vLLM's flags: vLLM's --help failed (exit 1)" in (
        problem.message
    )


# --- vllm_install: the flag list and its cache --------------------------------------------------


def test_vllm_flags_reads_the_fake_help_and_caches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**_environ(tmp_path), "PYTHONPATH": str(FAKE_VLLM)}
    install = inspect_vllm(sys.executable, env)
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(argv: list[str], **kwargs: Any) -> Any:
        calls.append(argv)
        return real_run(argv, **kwargs)

    monkeypatch.setattr("niodoo_supervisor.launch.install.subprocess.run", counting_run)
    cache = cache_dir(env)
    assert cache == tmp_path / "cache" / "niodoo-supervisor"

    flags = vllm_flags(install, env, cache)
    assert len(calls) == 1 and calls[0][-1] == "--help"
    assert {"--model", "--max-lora-rank", "--lora-modules", "--api-key", "--help"} <= flags
    assert {"--enable-lora", "--no-enable-lora", "--shutdown-timeout"} <= flags
    assert "--swap-space" not in flags and "--lora-extra-vocab-size" not in flags
    cached = list(cache.glob("vllm-flags-*.json"))
    assert len(cached) == 1 and set(json.loads(cached[0].read_text())) == flags

    assert vllm_flags(install, env, cache) == flags
    assert len(calls) == 1  # the second answer came from the cache


def test_vllm_flags_failure_raises(tmp_path: Path) -> None:
    env = {**_environ(tmp_path), "PYTHONPATH": str(_fake_vllm(tmp_path, "0.32.0"))}
    install = inspect_vllm(sys.executable, env)
    with pytest.raises(VllmProbeError, match=r"--help failed \(exit 1\)"):
        vllm_flags(install, env, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # a failure is not cached


def test_cache_dir_prefers_systemds_cache_directory(tmp_path: Path) -> None:
    assert cache_dir({"CACHE_DIRECTORY": "/var/cache/a:/var/cache/b"}) == Path("/var/cache/a")
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/niodoo-supervisor")
    assert cache_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/niodoo-supervisor")


def test_inspect_vllm_refuses_non_executable(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o644)  # no execute bit at all: refused even for root
    with pytest.raises(VllmProbeError, match="is not executable"):
        inspect_vllm(str(python), {})


def test_a_wrapper_script_as_server_python_is_a_warning(tmp_path: Path) -> None:
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    document = _document(tmp_path)
    document["server"]["python"] = str(wrapper)
    result, plan = _planned(tmp_path, document, options=_NO_PORT_NO_FLAGS)
    problem = _only(result, "server.python")
    assert not problem.is_error
    assert "is a script, not the interpreter" in problem.message
    assert "server.env" in problem.fix
    assert plan.argv[0] == str(wrapper)  # a warning: the config still runs
