"""The command line, run in-process: exit codes, one line per problem, no tracebacks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.named_files import read_api_key
from niodoo_supervisor.launch.plan import LaunchPlan, PlanError, plan_launch
from niodoo_supervisor.launch.render import REDACTED, redacted_env

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"
SECRET = "sk-cli-test-0123456789"


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The flag cache must not land in the real home; no API key may leak in from outside.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("NIODOO_CLI_TEST_KEY", raising=False)


def _model_dir(root: Path, name: str = "base") -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _adapter(path: Path, rank: int) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": "base"})
    )
    (path / "adapter_model.safetensors").write_bytes(b"\0")
    return path


def _document(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"python": sys.executable, "env": {"PYTHONPATH": str(FAKE_VLLM)}},
        "model": {"path": str(_model_dir(tmp_path / "models"))},
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }


def _write(tmp_path: Path, document: dict[str, Any] | str) -> Path:
    path = tmp_path / "niodoo.yaml"
    text = (
        document
        if isinstance(document, str)
        else yaml.safe_dump(document, sort_keys=False, width=1_000_000)
    )
    path.write_text(text)
    return path


def _line_of(path: Path, startswith: str, after: int = 0) -> int:
    """1-based number of the first line (after line `after`) starting with `startswith`."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number > after and line.strip().startswith(startswith):
            return number
    raise AssertionError(f"no line starts with {startswith!r}")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


# --- check --------------------------------------------------------------------------------------


def test_check_clean_config_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, _document(tmp_path))
    code, out, err = _run(capsys, "check", "-c", str(config), "--no-port")
    assert code == exitcodes.OK == 0
    assert out == [f"{config}: ok (0 warning(s)); vLLM 0.32.0 (unknown distribution)"]
    assert err == []


def test_check_with_only_warnings_exits_0_or_1_when_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    document["model"]["path"] = "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id: a warning only
    config = _write(tmp_path, document)
    code, out, _ = _run(capsys, "check", "-c", str(config), "--no-port")
    assert code == exitcodes.OK
    line = _line_of(config, "path:")
    assert out[0].startswith(f"{config}:{line}: warning: model.path: ")
    assert out[1] == f"{config}: ok (1 warning(s)); vLLM 0.32.0 (unknown distribution)"

    code, strict_out, _ = _run(capsys, "check", "-c", str(config), "--no-port", "--strict")
    assert code == exitcodes.WARNINGS == 1
    assert strict_out == out


def test_check_with_errors_exits_78_and_prints_every_problem_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    document["server"]["api_key_env"] = "NIODOO_CLI_TEST_KEY"
    document["engine"] = {"swap_space": 4}
    document["lora"] = {
        "enabled": True,
        "max_loras": 2,
        "adapters": [
            {"name": "ok", "path": str(_adapter(tmp_path / "adapters" / "ok", 8))},
            {"name": "gone", "path": str(tmp_path / "adapters" / "gone")},
        ],
    }
    config = _write(tmp_path, document)
    code, out, err = _run(capsys, "check", "-c", str(config), "--no-port")
    assert code == exitcodes.CONFIG == 78
    assert err == []
    gone = _line_of(config, "- name: gone")
    expected = {
        f"{config}:{_line_of(config, 'api_key_env:')}: error: server.api_key_env: ",
        f"{config}:{_line_of(config, 'swap_space:')}: error: engine.swap_space: ",
        f"{config}:{_line_of(config, 'path:', after=gone)}: error: lora.adapters[1].path: ",
    }
    problems = out[:-1]
    assert len(problems) == 3, out
    for prefix in expected:
        assert sum(line.startswith(prefix) for line in problems) == 1, (prefix, out)
    assert out[-1] == (f"{config}: 3 error(s), 0 warning(s): vLLM would not start with this config")


def test_check_of_a_missing_file_is_one_problem_line_and_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, out, err = _run(capsys, "check", "-c", str(missing))
    assert code == exitcodes.CONFIG
    assert out == [
        f"{missing}: error: (file): cannot read the config: No such file or directory; "
        "give the path of a readable UTF-8 YAML file with -c",
        f"{missing}: 1 error(s), 0 warning(s): vLLM would not start with this config",
    ]
    assert err == []


def test_check_of_bad_yaml_names_the_line_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, "server:\n  python: /x\nmodel: [unclosed\n  path: /m\n")
    code, out, err = _run(capsys, "check", "-c", str(config))
    assert code == exitcodes.CONFIG
    assert len(out) == 2 and err == []
    assert out[0].startswith(f"{config}:") and ": error: (yaml): invalid YAML: " in out[0]
    line = int(out[0].split(":")[1])
    assert 3 <= line <= 5


# --- render -------------------------------------------------------------------------------------


def test_render_json_gives_argv_and_env_with_the_secret_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n")
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(key_file)
    document["server"]["env"]["EXTRA_FOR_VLLM"] = "yes"
    config = _write(tmp_path, document)
    code = main(["render", "-c", str(config), "--json"])
    captured = capsys.readouterr()
    assert code == exitcodes.OK
    assert SECRET not in captured.out + captured.err
    data = json.loads(captured.out)
    assert set(data) == {"argv", "env"}
    assert data["argv"][:5] == [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        document["model"]["path"],
    ]
    assert all(isinstance(arg, str) for arg in data["argv"])
    assert data["env"]["VLLM_API_KEY"] == REDACTED
    assert data["env"]["EXTRA_FOR_VLLM"] == "yes"
    assert data["env"]["PYTHONPATH"] == str(FAKE_VLLM)
    assert data["env"]["VLLM_LOGGING_CONFIG_PATH"] == str(tmp_path / "state/vllm-logging.json")


def test_render_json_resolves_auto_rank_from_the_adapters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    document["lora"] = {
        "enabled": True,
        "max_loras": 2,
        "max_lora_rank": "auto",
        "adapters": [
            {"name": "a", "path": str(_adapter(tmp_path / "a", 8))},
            {"name": "b", "path": str(_adapter(tmp_path / "b", 40))},
        ],
    }
    config = _write(tmp_path, document)
    code, out, _ = _run(capsys, "render", "-c", str(config), "--json")
    assert code == exitcodes.OK
    argv = json.loads("\n".join(out))["argv"]
    assert argv[argv.index("--max-lora-rank") + 1] == "64"


def test_render_auto_without_adapters_is_one_line_and_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    document["lora"] = {"enabled": True, "max_lora_rank": "auto"}
    config = _write(tmp_path, document)
    code, out, err = _run(capsys, "render", "-c", str(config))
    assert code == exitcodes.CONFIG
    assert out == []
    assert err == [
        f"{config}:11: error: lora.max_lora_rank: auto cannot be resolved: no adapters are "
        "listed; give a number (vLLM's default is 16)"
    ]


def test_render_one_line_is_shlex_parseable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    # Quoting must matter: a space, a quote and a `$` in the model path.
    document["model"]["path"] = str(_model_dir(tmp_path / "my models", "it's $HOME"))
    document["model"]["served_name"] = "tiny"
    document["server"]["extra_args"] = ["--enable-prefix-caching"]
    config = _write(tmp_path, document)
    code, json_out, _ = _run(capsys, "render", "-c", str(config), "--json")
    assert code == exitcodes.OK
    argv = json.loads("\n".join(json_out))["argv"]

    code, out, _ = _run(capsys, "render", "-c", str(config), "--one-line")
    assert code == exitcodes.OK
    assert shlex.split(out[0]) == argv
    assert out[1] == "# environment added for vLLM:"
    assert "PYTHONUNBUFFERED=1" in out[2:]

    # The default shape splits flags over continued lines; the shell reads the same argv.
    code, out, _ = _run(capsys, "render", "-c", str(config))
    command = "\n".join(out[: out.index("# environment added for vLLM:")])
    assert shlex.split(command.replace("\\\n", " ")) == argv


def test_render_of_a_missing_file_is_one_line_and_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, out, err = _run(capsys, "render", "-c", str(missing), "--json")
    assert code == exitcodes.CONFIG
    assert out == []
    assert len(err) == 1 and err[0].startswith(f"{missing}: error: (file): cannot read")


def test_render_of_bad_yaml_is_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, "server: {python: /x\n")
    code, out, err = _run(capsys, "render", "-c", str(config))
    assert code == exitcodes.CONFIG
    assert out == []
    assert len(err) == 1 and ": error: (yaml): invalid YAML" in err[0]


def test_render_without_vllm_notes_it_and_still_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    document["server"]["python"] = str(tmp_path / "no-venv" / "python")
    config = _write(tmp_path, document)
    code, out, err = _run(capsys, "render", "-c", str(config), "--one-line")
    assert code == exitcodes.OK
    assert shlex.split(out[0])[0] == str(tmp_path / "no-venv" / "python")
    assert err == [
        f"note: {tmp_path / 'no-venv' / 'python'} does not exist; "
        "the logging config assumes a recent vLLM"
    ]


# --- the installed console script ---------------------------------------------------------------


def test_console_script_reports_a_bad_config_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "niodoo-supervisor"
    assert script.is_file(), f"{script} is missing: pip install -e . into the venv"
    bad = _write(tmp_path, "server:\n  python: [unclosed\n")
    for config in (bad, tmp_path / "missing.yaml"):
        result = subprocess.run(
            [str(script), "check", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == exitcodes.CONFIG, result
        assert "Traceback" not in result.stderr + result.stdout
        assert f"{config}" in result.stdout and ": error: " in result.stdout


def test_render_auto_above_the_largest_rank_is_a_config_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path)
    document["lora"] = {
        "enabled": True,
        "max_lora_rank": "auto",
        "adapters": [{"name": "huge", "path": str(_adapter(tmp_path / "huge", 1024))}],
    }
    config = _write(tmp_path, document)
    code, out, err = _run(capsys, "render", "-c", str(config), "--json")
    assert code == exitcodes.CONFIG
    assert out == []
    assert err == [
        f"{config}:11: error: lora.max_lora_rank: auto cannot be resolved: the largest adapter "
        "rank 1024 is above vLLM's maximum 512; retrain the adapter with a smaller rank"
    ]


def test_render_auto_uses_the_ranks_of_the_installed_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "old-vllm"
    (site / "vllm").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text("__version__ = '0.11.0'\n")
    document = _document(tmp_path)
    document["server"]["env"]["PYTHONPATH"] = str(site)
    document["lora"] = {
        "enabled": True,
        "max_lora_rank": "auto",
        "adapters": [{"name": "one", "path": str(_adapter(tmp_path / "one", 1))}],
    }
    config = _write(tmp_path, document)
    code, out, _ = _run(capsys, "render", "-c", str(config), "--json")
    assert code == exitcodes.OK
    argv = json.loads("\n".join(out))["argv"]
    assert argv[argv.index("--max-lora-rank") + 1] == "8"  # vLLM 0.11 has no rank 1


# --- one plan for render, check and run ---------------------------------------------------------


def test_check_and_render_make_the_same_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[LaunchPlan] = []

    def recording_plan_launch(*args: Any, **kwargs: Any) -> LaunchPlan:
        plans.append(plan_launch(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr("niodoo_supervisor.cli.main.plan_launch", recording_plan_launch)
    monkeypatch.setenv("NIODOO_CLI_TEST_KEY", SECRET)
    document = _document(tmp_path)
    document["server"]["api_key_env"] = "NIODOO_CLI_TEST_KEY"
    document["lora"] = {
        "enabled": True,
        "max_lora_rank": "auto",
        "adapters": [{"name": "a", "path": str(_adapter(tmp_path / "a", 12))}],
    }
    config = _write(tmp_path, document)
    assert _run(capsys, "check", "-c", str(config), "--no-port")[0] == exitcodes.OK
    code, out, _ = _run(capsys, "render", "-c", str(config), "--json")
    assert code == exitcodes.OK
    checked, rendered = plans
    assert checked.argv == rendered.argv == tuple(json.loads("\n".join(out))["argv"])
    assert checked.max_lora_rank == rendered.max_lora_rank == 16
    assert redacted_env(checked) == redacted_env(rendered)
    assert checked.api_key == SECRET and rendered.api_key is None  # render reads no secret


def test_render_never_reads_the_api_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever renders may not be allowed to read the key: neither preflight nor the plan
    asks for it, and its place shows redacted."""
    reads: list[str] = []

    def recording_read_api_key(config: Config, *args: Any) -> str | None:
        reads.append(str(config.server.api_key_file))
        return read_api_key(config, *args)

    monkeypatch.setattr("niodoo_supervisor.launch.preflight.read_api_key", recording_read_api_key)
    monkeypatch.setattr("niodoo_supervisor.launch.plan.read_api_key", recording_read_api_key)
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(key_file)
    config = _write(tmp_path, document)
    code, out, _ = _run(capsys, "render", "-c", str(config))
    assert code == exitcodes.OK and reads == []
    assert "VLLM_API_KEY='<redacted>'" in out and SECRET not in "\n".join(out)
    assert _run(capsys, "check", "-c", str(config), "--no-port")[0] == exitcodes.OK
    assert reads  # the recording sees the reads `check` makes


def test_check_reports_a_plan_that_cannot_be_made_after_preflight_passed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key file removed between preflight and the plan: one problem line, 78, no traceback.
    def vanished_key(*args: Any, **kwargs: Any) -> LaunchPlan:
        raise PlanError("server.api_key_file", "cannot read the API key from /k: it is gone")

    monkeypatch.setattr("niodoo_supervisor.cli.main.plan_launch", vanished_key)
    config = _write(tmp_path, _document(tmp_path))
    code, out, err = _run(capsys, "check", "-c", str(config), "--no-port")
    assert code == exitcodes.CONFIG and err == []
    assert out == [
        f"{config}: error: server.api_key_file: cannot read the API key from /k: it is gone",
        f"{config}: 1 error(s), 0 warning(s): vLLM would not start with this config",
    ]
