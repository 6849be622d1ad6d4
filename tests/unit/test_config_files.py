"""The files a config names, read by `check` and `run`: FIFOs, devices and oversized files are
refused with one problem line (exit 78) instead of blocking for ever or reading until memory
runs out; JSON nested past the recursion limit is a problem, not a crash; the API key is
trimmed, and refused when it could not travel in an HTTP header, without ever being quoted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.config.problems import Problem
from niodoo_supervisor.launch.adapters import AdapterReadError, read_adapter
from niodoo_supervisor.launch.plan import LaunchPlan, plan_launch
from niodoo_supervisor.launch.preflight import PreflightOptions, PreflightResult, preflight

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"
SECRET = "sk-files-test-0123456789"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@contextmanager
def _unblocked_after(fifo: Path, seconds: float = 10.0) -> Iterator[None]:
    """A reader that opens `fifo` blocks until a writer comes (today's main did, for ever). If
    the code under test is still blocked after `seconds`, a writer opens and closes the FIFO
    so the test fails on its assertion instead of hanging."""
    done = threading.Event()

    def unblock() -> None:
        if done.wait(seconds):
            return
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading yet
                done.wait(0.05)
                continue
            os.close(fd)
            return

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _document(tmp_path: Path) -> dict[str, Any]:
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return {
        "server": {"python": sys.executable, "env": {"PYTHONPATH": str(FAKE_VLLM)}},
        "model": {"path": str(model)},
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }


def _write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1_000_000))
    return path


def _preflight(
    tmp_path: Path, document: dict[str, Any], environ: dict[str, str] | None = None
) -> PreflightResult:
    return _checked(tmp_path, document, environ)[0]


def _plan(
    tmp_path: Path, document: dict[str, Any], environ: dict[str, str] | None = None
) -> LaunchPlan:
    result, plan = _checked(tmp_path, document, environ)
    assert result.problems == [] and plan is not None, [p.format() for p in result.problems]
    return plan


def _checked(
    tmp_path: Path, document: dict[str, Any], environ: dict[str, str] | None
) -> tuple[PreflightResult, LaunchPlan | None]:
    """Preflight, then the plan when preflight passed: as `run` does."""
    environ = {"PATH": os.environ.get("PATH", "/bin"), **(environ or {})}
    environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    config, problems = load_config(_write(tmp_path, document), environ)
    assert config is not None, [problem.format() for problem in problems]
    result = preflight(config, environ, PreflightOptions(check_port=False, check_flags=False))
    return result, plan_launch(config, result.install, environ) if result.ok else None


def _only(result: PreflightResult, path: str) -> Problem:
    found = [problem for problem in result.problems if problem.path == path]
    assert len(found) == 1, [problem.format() for problem in result.problems]
    return found[0]


# --- the config file itself ----------------------------------------------------------------


def test_a_fifo_as_the_config_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "niodoo.yaml")
    with _unblocked_after(fifo):
        config, problems = load_config(fifo, {})
    assert config is None
    assert [problem.format() for problem in problems] == [
        f"{fifo}: error: (file): cannot read the config: it is a FIFO, not a regular file; name "
        "a regular file (FIFOs and devices are refused: they can block or never end)"
    ]


def test_a_device_as_the_config_is_refused_unread() -> None:
    # /dev/zero would be read until memory runs out; /dev/null proves the same check safely.
    config, problems = load_config("/dev/null", {})
    assert config is None
    assert "cannot read the config: it is a character device, not a regular file" in (
        problems[0].message
    )


# --- the API key ---------------------------------------------------------------------------


def test_a_fifo_as_the_key_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "api-key")
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(fifo)
    with _unblocked_after(fifo):
        result = _preflight(tmp_path, document)
    problem = _only(result, "server.api_key_file")
    assert (
        problem.message == f"cannot read the API key from {fifo}: it is a FIFO, not a regular file"
    )
    assert not result.ok


def test_a_key_file_far_larger_than_a_key_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n" + "x" * 100_000)
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(key_file)
    problem = _only(_preflight(tmp_path, document), "server.api_key_file")
    assert "it is larger than 64 KiB" in problem.message and SECRET not in problem.format()


def test_surrounding_whitespace_of_a_key_variable_is_dropped(tmp_path: Path) -> None:
    # `KEY="abc "` in an EnvironmentFile, or a key pasted with its newline.
    document = _document(tmp_path)
    document["server"]["api_key_env"] = "NIODOO_FILES_TEST_KEY"
    plan = _plan(tmp_path, document, {"NIODOO_FILES_TEST_KEY": f" {SECRET}\n"})
    assert plan.api_key == SECRET and plan.env["VLLM_API_KEY"] == SECRET


def test_echo_key_into_a_file_works(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{SECRET}\n")  # what `echo KEY > file` writes
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(key_file)
    assert _plan(tmp_path, document).api_key == SECRET


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("sk one two", "contains whitespace at position 3 of 10"),
        ("sk-\x1b[0m", "contains a control character at position 4 of 7"),
        ("sk-clé", "contains a non-ASCII character at position 6 of 6"),
    ],
)
def test_a_key_that_cannot_travel_in_a_header_is_refused_unquoted(
    tmp_path: Path, key: str, said: str
) -> None:
    document = _document(tmp_path)
    document["server"]["api_key_env"] = "NIODOO_FILES_TEST_KEY"
    result = _preflight(tmp_path, document, {"NIODOO_FILES_TEST_KEY": key})
    problem = _only(result, "server.api_key_env")
    assert problem.message == (
        f"the API key in variable NIODOO_FILES_TEST_KEY {said}: it travels in an HTTP header"
    )
    assert key not in problem.format() and not result.ok


def test_check_refuses_a_fifo_key_file_with_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fifo = _fifo(tmp_path / "api-key")
    document = _document(tmp_path)
    document["server"]["api_key_file"] = str(fifo)
    with _unblocked_after(fifo):
        code = main(["check", "--no-port", "-c", str(_write(tmp_path, document))])
    out = capsys.readouterr().out.splitlines()
    assert code == exitcodes.CONFIG
    assert [line for line in out if ": error: " in line] == [
        f"{tmp_path / 'niodoo.yaml'}:5: error: server.api_key_file: cannot read the API key from "
        f"{fifo}: it is a FIFO, not a regular file; name a regular file (FIFOs and devices are "
        "refused: they can block or never end)"
    ]


# --- the logging config and adapter_config.json --------------------------------------------


def test_a_fifo_as_the_logging_config_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "logging.json")
    document = _document(tmp_path)
    document["server"]["logging_config"] = str(fifo)
    with _unblocked_after(fifo):
        problem = _only(_preflight(tmp_path, document), "server.logging_config")
    assert problem.message == f"cannot read {fifo}: it is a FIFO, not a regular file"


def test_a_device_as_the_logging_config_is_refused(tmp_path: Path) -> None:
    document = _document(tmp_path)
    document["server"]["logging_config"] = "/dev/null"
    problem = _only(_preflight(tmp_path, document), "server.logging_config")
    assert problem.message == "cannot read /dev/null: it is a character device, not a regular file"


def test_a_logging_config_nested_past_the_recursion_limit_is_a_problem(tmp_path: Path) -> None:
    logging_config = tmp_path / "logging.json"
    logging_config.write_text(DEEP_JSON)
    document = _document(tmp_path)
    document["server"]["logging_config"] = str(logging_config)
    problem = _only(_preflight(tmp_path, document), "server.logging_config")
    assert problem.message == f"{logging_config} is not valid JSON: nested too deeply"


def _adapter_folder(root: Path) -> Path:
    root.mkdir()
    (root / "adapter_model.safetensors").write_bytes(b"\0")
    return root


def test_a_fifo_as_adapter_config_json_is_refused_without_blocking(tmp_path: Path) -> None:
    folder = _adapter_folder(tmp_path / "a")
    fifo = _fifo(folder / "adapter_config.json")
    with _unblocked_after(fifo), pytest.raises(AdapterReadError) as caught:
        read_adapter(folder)
    assert str(caught.value).startswith(f"cannot read {fifo}: it is a FIFO, not a regular file")


def test_an_adapter_config_nested_past_the_recursion_limit_is_a_problem(tmp_path: Path) -> None:
    folder = _adapter_folder(tmp_path / "a")
    (folder / "adapter_config.json").write_text(DEEP_JSON)
    document = _document(tmp_path)
    document["lora"] = {
        "enabled": True,
        "max_lora_rank": 16,
        "adapters": [{"name": "a", "path": str(folder)}],
    }
    problem = _only(_preflight(tmp_path, document), "lora.adapters[0].path")
    assert problem.message == (
        f"{folder / 'adapter_config.json'} is not valid JSON: nested too deeply"
    )


def test_an_adapter_config_far_larger_than_peft_writes_is_refused(tmp_path: Path) -> None:
    folder = _adapter_folder(tmp_path / "a")
    padding = {f"m{index}": 8 for index in range(200_000)}
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "rank_pattern": padding})
    )
    with pytest.raises(AdapterReadError, match="it is larger than 1024 KiB"):
        read_adapter(folder)
