"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The slow tiers, marked by folder so `-m "not e2e and not systemd"` leaves them out.
_TIER_MARKS = {"tests/e2e/": pytest.mark.e2e, "tests/systemd/": pytest.mark.systemd}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath).replace(os.sep, "/")
        for folder, mark in _TIER_MARKS.items():
            if folder in path:
                item.add_marker(mark)


@pytest.fixture
def repo() -> Path:
    return REPO
