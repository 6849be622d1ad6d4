"""Hostile or careless config text: alias bombs, values YAML cannot build, numbers that would
overflow a timer, names execve refuses. Each is one problem line naming the YAML path (exit
78 in the CLI), never an exception (exit 70) or minutes of work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from niodoo_supervisor.config import loader as config_module
from niodoo_supervisor.config import yamldoc
from niodoo_supervisor.config.fields import Field, Kind
from niodoo_supervisor.config.loader import ALL_FIELDS, load_config, parse_config
from niodoo_supervisor.config.problems import Problem

BASE = "server:\n  python: /v/bin/python\nmodel:\n  path: /models/m\n"
NUMBER_SETTINGS = [
    spec
    for spec in ALL_FIELDS
    if spec.key.startswith("supervisor.") and spec.kind in (Kind.INT, Kind.FLOAT)
]


@pytest.fixture(params=["libyaml", "python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with libyaml's parser and with PyYAML's own: both must behave the same."""
    if request.param == "python":
        monkeypatch.setattr(yamldoc, "_Loader", yamldoc.PythonLoader)
    yield request.param


def _errors(text: str, environ: dict[str, str] | None = None) -> list[Problem]:
    config, problems = parse_config(
        text, source="c.yaml", base_dir=Path("/etc/n"), environ=environ or {}
    )
    errors = [problem for problem in problems if problem.is_error]
    assert (config is None) == bool(errors)
    return errors


def _one_error(text: str, environ: dict[str, str] | None = None) -> Problem:
    errors = _errors(text, environ)
    assert len(errors) == 1, [problem.format() for problem in errors]
    return errors[0]


def _with(section: str, lines: str) -> str:
    """BASE with `lines` (indented keys) added under `section`."""
    if f"{section}:\n" in BASE:
        return BASE.replace(f"{section}:\n", f"{section}:\n{lines}\n", 1)
    return f"{BASE}{section}:\n{lines}\n"


def _alias_bomb(levels: int, width: int = 9) -> str:
    """`levels` lists of `width` aliases of the list before: width**levels values in ~50
    bytes a level."""
    lines = [f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [
        f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]"
        for level in range(1, levels)
    ]
    return f"{BASE}x_anchors:\n" + "\n".join(lines) + f"\nrules: *l{levels - 1}\n"


# --- YAML that would cost minutes or gigabytes ---------------------------------------------


@pytest.mark.usefixtures("loader")
def test_nested_aliases_are_refused_before_they_are_expanded() -> None:
    # 9**6 = 531,441 values in 400 bytes (main spent 2.5 s and 165 MB on it, 47 s and 1.7 GB
    # on one level more); the refusal names the line that goes past the limit.
    text = _alias_bomb(6)
    problem = _one_error(text)
    assert problem.path == "(yaml)" and problem.line == BASE.count("\n") + 7
    assert "once its aliases (*name) are expanded" in problem.message
    assert "100,000" in problem.message


@pytest.mark.usefixtures("loader")
def test_a_few_aliases_are_still_fine() -> None:
    text = "x_env: &env {A: '1'}\n" + BASE.replace("server:\n", "server:\n  env: *env\n")
    assert [problem.path for problem in _errors(text)] == ["x_env"]


@pytest.mark.usefixtures("loader")
def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    problem = _one_error(BASE + "rules: &r\n  - *r\n")
    assert "refers to a node that contains it" in problem.message


@pytest.mark.usefixtures("loader")
def test_deep_nesting_is_refused() -> None:
    depth = yamldoc.MAX_DEPTH + 5
    problem = _one_error(BASE + "rules: " + "[" * depth + "]" * depth + "\n")
    assert problem.path == "(yaml)" and "nested" in problem.message


def test_a_config_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    limit = config_module.MAX_CONFIG_BYTES
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "# " + "x" * limit + "\n")
    config, problems = load_config(path, environ={})
    assert config is None
    assert [problem.format() for problem in problems] == [
        f"{path}: error: (file): cannot read the config: it is larger than "
        f"{limit // 1024} KiB; name the right file; it is far too big"
    ]


def test_libyaml_parses_when_pyyaml_has_it() -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    assert issubclass(yamldoc._Loader, yaml.CSafeLoader)


# --- values YAML cannot build --------------------------------------------------------------


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize(
    ("lines", "path", "said"),
    [
        (
            "  served_name: 2001-13-45",
            "model.served_name",
            "'2001-13-45' cannot be read as a YAML timestamp",
        ),
        ("  revision: 2024-02-30", "model.revision", "cannot be read as a YAML timestamp"),
        (
            "  max_model_len: !!float abc",
            "model.max_model_len",
            "'abc' cannot be read as a YAML float",
        ),
        (
            f"  max_model_len: {'9' * 5000}",
            "model.max_model_len",
            "(5000 characters)' cannot be read as a YAML int",
        ),
        (
            f"  served_name: {'7' * 5000}",
            "model.served_name",
            "(5000 characters)' cannot be read as a YAML int",
        ),
    ],
)
def test_a_value_yaml_cannot_build_names_its_key_and_line(lines: str, path: str, said: str) -> None:
    problem = _one_error(_with("model", lines))
    assert problem.path == path and problem.line == 4
    assert said in problem.message
    assert "set_int_max_str_digits" not in problem.message
    assert problem.fix == "quote it if it is text, or write a valid value"
    assert len(problem.format()) < 300


@pytest.mark.usefixtures("loader")
def test_a_key_yaml_cannot_build_is_reported_too() -> None:
    problem = _one_error(_with("server", "  env:\n    2001-13-45: x"))
    assert problem.path == "server.env.2001-13-45" and problem.line == 3
    assert "timestamp" in problem.message


def test_a_huge_integer_through_a_variable_is_a_problem() -> None:
    big = "9" * 5000
    problem = _one_error(_with("supervisor", "  startup_timeout: ${BIG}"), {"BIG": big})
    assert problem.path == "supervisor.startup_timeout"
    assert "must be a number" in problem.message and "(5002 characters)" in problem.message
    problem = _one_error(_with("server", "  port: ${BIG}"), {"BIG": "9" * 30})
    assert problem.path == "server.port" and "out of range" in problem.message


def test_an_integer_beyond_64_bits_is_out_of_range() -> None:
    problem = _one_error(_with("engine", f"  seed: {'1' * 400}"))
    assert problem.path == "engine.seed"
    assert problem.message == "an integer of about 400 digits is out of range"


# --- numbers that become timers, buffers and loops -----------------------------------------


@pytest.mark.parametrize("spec", NUMBER_SETTINGS, ids=lambda spec: spec.key)
def test_every_supervisor_number_has_a_maximum(spec: object) -> None:
    assert isinstance(spec, Field) and spec.maximum is not None
    section, _, rest = spec.key.partition(".")
    *parents, leaf = rest.split(".")
    indent = "  "
    lines = []
    for parent in parents:
        lines.append(f"{indent}{parent}:")
        indent += "  "
    huge = "1.0e+303" if spec.kind is Kind.FLOAT else str(10**30)
    lines.append(f"{indent}{leaf}: {huge}")
    problem = _one_error(_with(section, "\n".join(lines)))
    assert problem.path == spec.key
    assert "above the maximum" in problem.message or "out of range" in problem.message


def test_an_exponent_without_a_point_gets_a_yaml_hint() -> None:
    problem = _one_error(_with("supervisor", "  startup_stall_timeout: 1e3"))
    assert "write e.g. 1.0e+3" in problem.fix


# --- strings execve or the resolver refuse -------------------------------------------------


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ('{"A=B": x}', "the name 'A=B' is empty or contains '='"),
        ('{"": x}', "the name '' is empty or contains '='"),
        ('{"A\\0B": x}', "contains a NUL character"),
        ('{A: "x\\0y"}', "contains a NUL character"),
    ],
)
def test_server_env_names_and_values_execve_refuses(env: str, said: str) -> None:
    problem = _one_error(_with("server", f"  env: {env}"))
    assert problem.path == "server.env" and said in problem.message


@pytest.mark.parametrize(
    ("section", "lines", "path"),
    [
        ("model", '  path: "/models/m\\0x"', "model.path"),
        ("server", '  extra_args: ["--x\\0"]', "server.extra_args"),
        ("lora", '  enabled: true\n  adapters: [{name: a, path: "/a\\0"}]', "lora.adapters"),
    ],
)
def test_a_nul_anywhere_is_a_problem(section: str, lines: str, path: str) -> None:
    text = _with(section, lines)
    if section == "model":
        text = text.replace("  path: /models/m\n", "")
    assert _one_error(text).path == path


@pytest.mark.parametrize(
    ("host", "fix"),
    [
        ("hôst.example", "write its ASCII form xn--hst-kna.example"),
        ("ä" * 70, "use an IP address"),
        ("a..b", "use e.g. 127.0.0.1"),
        ("-leading.example", "use e.g. 127.0.0.1"),
        ("two words", "use e.g. 127.0.0.1"),
    ],
)
def test_a_host_that_is_no_address_or_ascii_name_is_refused(host: str, fix: str) -> None:
    problem = _one_error(_with("server", f'  host: "{host}"'))
    assert problem.path == "server.host" and problem.fix.startswith(fix)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "gpu-box.lan.", "my_container"]
)
def test_addresses_and_names_are_accepted_as_hosts(host: str) -> None:
    assert _errors(_with("server", f'  host: "{host}"\n  api_key_env: K')) == []


def _nested(key: str, value: str) -> str:
    """BASE with `key: value` written at its dotted place."""
    section, _, rest = key.partition(".")
    *parents, leaf = rest.split(".")
    lines, indent = [], "  "
    for parent in parents:
        lines.append(f"{indent}{parent}:")
        indent += "  "
    lines.append(f"{indent}{leaf}: {value}")
    return _with(section, "\n".join(lines))


@pytest.mark.parametrize(
    "spec",
    [spec for spec in ALL_FIELDS if spec.kind in (Kind.INT, Kind.FLOAT)],
    ids=lambda spec: spec.key,
)
def test_every_number_refuses_an_integer_beyond_64_bits(spec: Field) -> None:
    problem = _one_error(_nested(spec.key, "0x7fffffffffffffffff"))
    assert problem.path == spec.key
    assert problem.message == "an integer of about 22 digits is out of range"


@pytest.mark.parametrize(
    "spec",
    [spec for spec in ALL_FIELDS if spec.kind is Kind.STR and spec.choices],
    ids=lambda spec: spec.key,
)
def test_a_choice_of_words_says_what_is_wrong_with_other_shapes(spec: Field) -> None:
    problem = _one_error(_nested(spec.key, "[a, 1]"))
    assert (problem.path, problem.message, problem.fix) == (
        spec.key,
        "must be a string, not a list",
        "quote it",
    )
    problem = _one_error(_nested(spec.key, "' '"))
    assert (problem.message, problem.fix) == ("must not be empty", spec.doc)
