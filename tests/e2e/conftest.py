"""The real-vLLM tier: vLLM's CPU build serving the generated demo model.

The vLLM interpreter comes from NIODOO_VLLM_PYTHON (set by `make test`), or from
scripts/setup-vllm-env.sh, which reuses its cached environment. Nothing here is skipped:
without a working vLLM this tier fails, as it should.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import REPO
from niodoo_supervisor.demo.model import DemoModel, generate
from realvllm import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("real vLLM: figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    configured = os.environ.get("NIODOO_VLLM_PYTHON")
    if configured:
        return configured
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup-vllm-env.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def demo_model() -> DemoModel:
    return generate(REPO / "var" / "demo-model")


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("e2e")
