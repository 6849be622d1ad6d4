"""Modules hold one thing: none grows past the size a reader takes in at once (STYLE)."""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "niodoo_supervisor"
LIMIT = 400  # lines


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(path.relative_to(SOURCE)): count
        for path in sorted(SOURCE.rglob("*.py"))
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert long == {}, f"split these modules (more than {LIMIT} lines): {long}"
