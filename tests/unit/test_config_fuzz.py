"""Property: any document, however malformed, ends in a config or clean problems, never an
exception escaping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from niodoo_supervisor.config import ALL_FIELDS, parse_config

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
