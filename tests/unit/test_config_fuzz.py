"""Property: any document, however malformed, ends in a config or clean problems, never an
exception escaping."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from niodoo_supervisor.config.loader import ALL_FIELDS, parse_config

KEYS = sorted({part for spec in ALL_FIELDS for part in spec.key.split(".")} | {"name", "path", "x"})
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "${X}", "${UNSET}", "${X:-3}", "$${", "${", "awq", "16", "0.0.0.0"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=5
        ),
    ),
    max_leaves=25,
)


def _check(text: str) -> None:
    config, problems = parse_config(text, base_dir=Path("/cfg"), environ={"X": "7"})
    assert (config is None) == any(problem.is_error for problem in problems)
    for problem in problems:
        line = problem.format()
        assert "\n" not in line and line


@settings(max_examples=300, deadline=None)
@given(documents)
def test_structured_documents_never_raise(document: Any) -> None:
    _check(yaml.safe_dump(document))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["server", "model", "engine", "lora", "supervisor", "rules"]),
        st.dictionaries(st.sampled_from(KEYS), scalars | st.lists(scalars, max_size=3), max_size=6),
        max_size=6,
    )
)
def test_near_valid_sections_never_raise(document: dict[str, Any]) -> None:
    _check(yaml.safe_dump(document))


# --- `check` on hostile shapes: a config problem is 78, never 70 ---------------------------

HOSTILE = [
    "2001-13-45",
    "2024-02-30 10:00:00",
    "!!float abc",
    "!!int x",
    "!!timestamp never",
    "!!binary '%%%'",
    "9" * 5000,
    "${BIG}",
    "${HUGE_FLOAT}",
    '"a\\0b"',
    '"hôst.example"',
    '"' + "ä" * 70 + '"',
    "1.0e+303",
    "-1.0e+303",
    "1e303",
    ".nan",
    "-.inf",
    "0x7fffffffffffffffff",
    "&a [*a]",
    '{"A=B": x, "": y}',
    '["--x\\0"]',
    "[{name: a, path: /nowhere}]",
    "[{name: a, path: /dev/null}]",
    "/dev/zero",
    "/dev/null",
    "{}",
    "[]",
    "~",
]
hostile_fields = st.lists(
    st.tuples(st.sampled_from([spec.key for spec in ALL_FIELDS]), st.sampled_from(HOSTILE)),
    min_size=1,
    max_size=4,
)


def _flow(key: str, token: str) -> str:
    """`a.b.c` and a token as one top-level YAML line: `a: {b: {c: TOKEN}}`."""
    first, *rest = key.split(".")
    if not rest:
        return f"{first}: {token}"
    inner = token
    for part in reversed(rest):
        inner = f"{{{part}: {inner}}}"
    return f"{first}: {inner}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_fields)
def test_check_never_exits_70_on_hostile_values(fields: list[tuple[str, str]]) -> None:
    from niodoo_supervisor import exitcodes
    from niodoo_supervisor.cli.main import main

    lines = [_flow(key, token) for key, token in fields]
    text = "\n".join(["server: {python: /nonexistent/python}", "model: {path: /m}", *lines])
    environ = {"BIG": "9" * 5000, "HUGE_FLOAT": "1.0e+303", "XDG_CACHE_HOME": "/nonexistent"}
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, environ):
        path = Path(folder) / "niodoo.yaml"
        path.write_text(text + "\n")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(["check", "--no-port", "-c", str(path)])
    assert code in (exitcodes.OK, exitcodes.CONFIG), text
