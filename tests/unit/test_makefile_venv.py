"""The Makefile's .venv: `make demo` installs the runtime and the `demo` extra only, `make test`
the dev tools; whichever runs second installs only what the first did not.

Runs make on a copy of the Makefile and pyproject.toml with the pip command replaced by an echo
(`PIP_INSTALL=...`) and an existing .venv/bin/python, so nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    return tmp_path


def installs(checkout: Path, target: str, *, dry_run: bool = False) -> list[str]:
    """The extras `make <target>` installs, or with `dry_run` would install (`make -n`: the demo
    itself is not run). pip is replaced by an echo; make echoes each command it runs."""
    done = subprocess.run(
        ["make", *(["-n"] if dry_run else []), target, "PIP_INSTALL=echo INSTALL"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    return [line.split()[-1].strip("'") for line in lines if line.startswith("echo INSTALL ")]


def test_demo_installs_the_demo_extra_without_dev_tools(checkout: Path) -> None:
    assert installs(checkout, "demo", dry_run=True) == [".[demo]"]


def test_demo_then_test_adds_the_dev_tools(checkout: Path) -> None:
    assert installs(checkout, "venv-demo") == [".[demo]"]
    assert installs(checkout, "lint", dry_run=True) == [".[dev]"]


def test_test_then_demo_installs_nothing(checkout: Path) -> None:
    assert installs(checkout, "venv") == [".[dev]"]
    assert installs(checkout, "demo", dry_run=True) == []


def test_a_changed_pyproject_installs_again(checkout: Path) -> None:
    installs(checkout, "venv")
    later = time.time() + 10  # strictly newer than the stamps, whatever the mtime resolution
    os.utime(checkout / "pyproject.toml", (later, later))
    assert installs(checkout, "demo", dry_run=True) == [".[demo]"]
