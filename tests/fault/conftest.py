"""The `supervise` fixture: starts `niodoo-supervisor run` on the fake vLLM, ends it after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fault_supervisor import Launcher, make_config
from harness import SupervisorRun, notify_socket, start_supervisor, stop_supervisor


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Launcher]:
    runs: list[SupervisorRun] = []
    with notify_socket(tmp_path) as notify:

        def launch(faults: str = "", **overrides: object) -> SupervisorRun:
            config = make_config(tmp_path, faults, **overrides)
            run = start_supervisor(config, tmp_path / "state", notify, tmp_path)
            runs.append(run)
            return run

        yield launch
        for run in runs:
            stop_supervisor(run)
