"""Config validation: every problem at once, each naming its YAML path, line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typing_extensions import assert_type

from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.config.loader import ALL_FIELDS, load_config, parse_config
from niodoo_supervisor.config.problems import Problem
from niodoo_supervisor.config.vllm_options import LORA_RANKS, VLLM_OPTIONS

BASE = "server:\n  python: /v/bin/python\nmodel:\n  path: /models/m\n"


def _problems(text: str, environ: dict[str, str] | None = None) -> list[Problem]:
    _, problems = parse_config(
        text, source="c.yaml", base_dir=Path("/etc/n"), environ=environ or {}
    )
    return problems


def _lines(text: str, environ: dict[str, str] | None = None) -> list[str]:
    return [problem.format() for problem in _problems(text, environ)]


def test_minimal_config_is_valid_with_defaults() -> None:
    config, problems = parse_config(BASE, base_dir=Path("/etc/n"), environ={})
    assert problems == [] and config is not None
    assert config.port == 8000 and config.host == "127.0.0.1"
    assert config.supervisor.health.failure_threshold == 3
    assert config.lora.enabled is False
    assert config.served_name == "/models/m"


def test_unknown_keys_get_a_did_you_mean_with_the_line() -> None:
    lines = _lines(BASE + "lora:\n  enabled: true\n  max_lora_rnak: 16\nengine:\n  max_loras: 2\n")
    assert (
        "c.yaml:7: error: lora.max_lora_rnak: unknown key; did you mean lora.max_lora_rank?"
        in lines
    )
    assert any(
        "engine.max_loras: unknown key; did you mean lora.max_loras?" in line for line in lines
    )


def test_every_problem_is_reported_at_once() -> None:
    text = BASE.replace("/models/m", "/models/m\n  max_model_len: many") + (
        "server2: {}\nengine:\n  gpu_memory_utilization: 1.5\n  tensor_parallel_size: 0\n"
    )
    text = text.replace("python: /v/bin/python", "python: /v/bin/python\n  port: 70000")
    paths = {problem.path for problem in _problems(text)}
    assert {
        "server.port",
        "model.max_model_len",
        "server2",
        "engine.gpu_memory_utilization",
        "engine.tensor_parallel_size",
    } <= paths


def test_ranges_and_types_name_the_fix() -> None:
    lines = _lines(BASE + "engine:\n  gpu_memory_utilization: 0\n")
    assert lines == [
        "c.yaml:6: error: engine.gpu_memory_utilization: 0.0 must be greater than 0; use a value > 0 and <= 1"
    ]
    assert "must be true or false" in _lines(BASE + "lora: {enabled: yes please}\n")[0]


def test_max_lora_rank_must_be_a_value_vllm_accepts() -> None:
    lines = _lines(BASE + "lora: {enabled: true, max_lora_rank: 24}\n")
    assert len(lines) == 1
    assert "lora.max_lora_rank: 24 is not accepted" in lines[0]
    assert "1, 8, 16, 32, 64, 128, 256, 320, 512, auto" in lines[0]
    assert (
        _lines(
            BASE + "lora: {enabled: true, max_lora_rank: auto, adapters: [{name: a, path: a}]}\n"
        )
        == []
    )


def test_lora_settings_while_disabled_are_refused() -> None:
    lines = _lines(BASE + "lora:\n  max_loras: 4\n")
    assert len(lines) == 1 and "lora.enabled is false" in lines[0] and "lora.max_loras" in lines[0]


def test_max_cpu_loras_below_max_loras() -> None:
    lines = _lines(BASE + "lora: {enabled: true, max_loras: 4, max_cpu_loras: 2}\n")
    assert any("max_cpu_loras (2) must be >= max_loras (4)" in line for line in lines)


def test_adapter_names_duplicate_or_equal_to_the_served_model() -> None:
    text = BASE.replace("/models/m", "/models/m\n  served_name: tiny") + (
        "lora:\n  enabled: true\n  max_loras: 4\n  adapters:\n"
        "    - {name: a, path: x}\n    - {name: a, path: y}\n    - {name: tiny, path: z}\n"
    )
    lines = _lines(text)
    assert any(
        "lora.adapters[1].name: adapter name 'a' is also lora.adapters[0]" in line for line in lines
    )
    assert any(
        "lora.adapters[2].name: adapter name 'tiny' is the served model's name" in line
        for line in lines
    )


def test_more_adapters_than_slots_is_a_warning_that_says_what_happens() -> None:
    adapters = "".join(f"    - {{name: a{i}, path: p{i}}}\n" for i in range(3))
    problems = _problems(
        BASE
        + "lora:\n  enabled: true\n  max_loras: 2\n  max_cpu_loras: 4\n  adapters:\n"
        + adapters
    )
    assert [p.is_error for p in problems] == [False]
    assert "requests for others wait" in problems[0].message
    problems = _problems(
        BASE
        + "lora:\n  enabled: true\n  max_cpu_loras: 2\n  max_loras: 1\n  adapters:\n"
        + adapters
    )
    assert "evicted and reloaded from disk" in problems[0].message


def test_adapter_paths_resolve_against_the_config_folder() -> None:
    config, _ = parse_config(
        BASE
        + "lora: {enabled: true, adapters: [{name: a, path: ../ad/a}, {name: b, path: /abs/b}]}\n",
        base_dir=Path("/etc/n"),
        environ={},
    )
    assert config is not None
    assert config.adapters == (Adapter("a", "/etc/ad/a"), Adapter("b", "/abs/b"))


def test_model_path_is_resolved_only_when_it_looks_local() -> None:
    config, _ = parse_config(BASE.replace("/models/m", "./m"), base_dir=Path("/etc/n"), environ={})
    assert config is not None and config.model.path == "/etc/n/m"
    config, _ = parse_config(
        BASE.replace("/models/m", "Qwen/Qwen2.5-7B"), base_dir=Path("/etc/n"), environ={}
    )
    assert config is not None and config.model.path == "Qwen/Qwen2.5-7B"


def test_a_home_of_an_unknown_user_is_one_problem_not_a_traceback() -> None:
    lines = _lines(BASE.replace("/models/m", "~no-such-user-here/m"))
    assert len(lines) == 1 and "model.path: '~no-such-user-here' names no user of this" in lines[0]


def test_env_expansion_with_defaults_types_and_escapes() -> None:
    text = BASE.replace(
        "python: /v/bin/python", "python: ${PY}\n  port: ${PORT:-9000}\n  env: {PASS: a$$b}"
    )
    config, problems = parse_config(text, base_dir=Path("/"), environ={"PY": "/x/python"})
    assert problems == [] and config is not None
    assert config.server.python == "/x/python" and config.port == 9000
    assert config.server.env == {"PASS": "a$b"}
    lines = _lines(text)
    assert lines == [
        "c.yaml:2: error: server.python: environment variable PY is not set; set it, or write ${PY:-default}"
    ]


def test_host_without_api_key_is_a_warning_and_both_key_sources_an_error() -> None:
    problems = _problems(
        BASE.replace("python: /v/bin/python", "python: /v/bin/python\n  host: 0.0.0.0")
    )
    assert (
        len(problems) == 1
        and not problems[0].is_error
        and "without an API key" in problems[0].message
    )
    both = BASE.replace(
        "python: /v/bin/python", "python: /v/bin/python\n  api_key_env: K\n  api_key_file: /k"
    )
    assert any("both api_key_env and api_key_file" in line for line in _lines(both))


def test_syntax_errors_duplicates_and_wrong_shapes() -> None:
    assert _lines("server: [unclosed\n")[0].startswith("c.yaml:2: error: (yaml): invalid YAML")
    assert _lines("")[0].endswith("the config is empty; start from config/demo-cpu.yaml")
    assert "must be a mapping of sections" in _lines("- a\n- b\n")[0]
    assert "server: must be a mapping" in _lines("server: 3\nmodel: {path: /m}\n")[0]


def test_duplicate_keys_are_reported() -> None:
    lines = _lines(BASE + "engine:\n  seed: 1\n  seed: 2\n")
    assert any("engine.seed: key given twice" in line for line in lines)


def test_missing_required_keys() -> None:
    paths = {problem.path for problem in _problems("engine: {seed: 1}\n")}
    assert {"server.python", "model.path"} <= paths


def test_unreadable_file_is_one_clean_error(tmp_path: Path) -> None:
    config, problems = load_config(tmp_path / "nope.yaml")
    assert config is None and len(problems) == 1
    assert "cannot read the config: No such file or directory" in problems[0].format()


def test_non_finite_numbers_are_refused() -> None:
    lines = _lines(BASE + "supervisor:\n  health:\n    interval: .nan\n  startup_timeout: .inf\n")
    assert len(lines) == 2 and all("must be a finite number" in line for line in lines)


def test_a_variable_in_a_string_field_stays_a_string() -> None:
    text = BASE.replace("/models/m", "/models/m\n  served_name: '${N}'")
    config, problems = parse_config(text, base_dir=Path("/"), environ={"N": "on"})
    assert problems == [] and config is not None and config.model.served_name == "on"


# --- the typed config ----------------------------------------------------------------------


def test_keys_are_read_as_typed_attributes() -> None:
    config, _ = parse_config(
        BASE + "supervisor: {health: {interval: 5}}\nlora: {enabled: true, max_lora_rank: 16}\n",
        base_dir=Path("/etc/n"),
        environ={},
    )
    assert config is not None
    assert_type(config.supervisor.health.interval, float)
    assert config.supervisor.health.interval == 5.0
    assert isinstance(config.supervisor.health.interval, float)
    assert_type(config.server.port, int)
    assert config.lora.max_lora_rank == 16 and config.model.dtype is None
    assert config.supervisor.restart.max_starts == 5


def test_every_key_of_the_table_is_an_attribute_path_of_the_loaded_config() -> None:
    """The flat table (docs, render, preflight) and the typed models name the same keys."""
    text = BASE + (
        "lora:\n  enabled: true\n  adapters: [{name: a, path: ad/a}]\n"
        "rules: [{name: my_rule, pattern: 'boom'}]\nserver2: {}\n"
    )
    config, _ = parse_config(text.replace("server2: {}\n", ""), base_dir=Path("/etc/n"), environ={})
    assert config is not None
    for spec in ALL_FIELDS:
        spec.value_in(config)  # raises AttributeError for a key the models do not have
    assert config.lora.adapters == (Adapter("a", "/etc/n/ad/a"),)
    assert config.server.extra_args == () and config.server.env == {}
    assert config.supervisor.state_dir == "/var/lib/niodoo-supervisor"
    assert [rule.name for rule in config.rules] == ["my_rule"]


def test_the_config_is_frozen() -> None:
    config, _ = parse_config(BASE, base_dir=Path("/etc/n"), environ={})
    assert config is not None
    with pytest.raises(ValidationError):
        config.supervisor.health.interval = 1.0  # type: ignore[misc]


def test_the_vllm_option_table_is_read_off_the_declarations() -> None:
    flagged = {spec.key for spec in ALL_FIELDS if spec.flag}
    assert [option.key for option in VLLM_OPTIONS][:4] == [
        "model.path",
        "model.served_name",
        "server.host",
        "server.port",
    ]
    assert {option.key for option in VLLM_OPTIONS} == flagged
    # One flag per option, but for the deprecated alias (at most one of the two is set).
    flags = [option.flag for option in VLLM_OPTIONS if option.key != "server.shutdown_timeout"]
    assert len(set(flags)) == len(VLLM_OPTIONS) - 1
    swap = next(option for option in VLLM_OPTIONS if option.key == "engine.swap_space")
    assert swap.flag == "--swap-space" and swap.versions_text() == (
        "vLLM before 0.18.0 (removed in 0.18.0)"
    )
    assert LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)


def test_line_of_falls_back_to_the_item_or_list_a_key_is_in() -> None:
    text = BASE + "lora:\n  enabled: true\n  adapters:\n    - name: a\n      path: x\n"
    config, _ = parse_config(text, base_dir=Path("/etc/n"), environ={})
    assert config is not None
    assert config.line_of("lora.adapters[0].path") == 9
    assert config.line_of("lora.adapters[0].base_model_name") == 8
    assert config.line_of("lora.adapters[3]") == 7
    assert config.line_of("engine.seed") is None


def test_adapter_items_are_checked_key_by_key() -> None:
    text = BASE + (
        "lora:\n  enabled: true\n  adapters:\n"
        "    - {name: a, pth: x}\n    - {name: 'b c', path: y, base_model_name: 3}\n    - 7\n"
    )
    assert _lines(text) == [
        "c.yaml:8: error: lora.adapters[0].path: an adapter needs a path (a string); give the adapter's directory",
        "c.yaml:8: error: lora.adapters[0].pth: unknown key; did you mean path?",
        "c.yaml:9: error: lora.adapters[1].name: 'b c' contains whitespace or '='; use letters, digits, '-', '_' or '.'",
        "c.yaml:9: error: lora.adapters[1].base_model_name: must be a string, not an integer; name the base model",
        "c.yaml:10: error: lora.adapters[2]: must be a mapping with name and path; write `- name: a` and ` path: /adapters/a`",
    ]


def test_a_variable_in_a_boolean_or_number_field_is_typed() -> None:
    text = BASE + "engine: {enforce_eager: '${EAGER}', seed: '${SEED:-7}'}\n"
    config, problems = parse_config(text, base_dir=Path("/"), environ={"EAGER": "true"})
    assert problems == [] and config is not None
    assert config.engine.enforce_eager is True and config.engine.seed == 7
    text = BASE.replace("python: /v/bin/python", "python: /v/bin/python\n  port: ${PORT}")
    assert _lines(text, {"PORT": "eighty"}) == [
        "c.yaml:3: error: server.port: must be an integer, not a string 'eighty'; "
        "TCP port of vLLM's OpenAI-compatible API; the supervisor probes it."
    ]


def test_yaml_values_are_not_coerced() -> None:
    lines = _lines(BASE + "server: {port: '8000'}\nlora: {enabled: true, max_lora_rank: true}\n")
    assert any("server.port: must be an integer, not a string '8000'" in line for line in lines)
    assert any(
        "lora.max_lora_rank: must be an integer or auto, not a boolean True" in line
        for line in lines
    )


def test_checks_between_keys_run_beside_a_wrong_key_elsewhere() -> None:
    """A type error in one key does not hide a relation problem between other, valid keys."""
    text = (
        BASE.replace("python: /v/bin/python", "python: /v/bin/python\n  host: 0.0.0.0")
        + "lora:\n  enabled: true\n  max_loras: 4\n  max_cpu_loras: 2\n"
        + "supervisor:\n  health:\n    interval: abc\n"
    )
    paths = {(problem.path, problem.is_error) for problem in _problems(text)}
    assert ("supervisor.health.interval", True) in paths
    assert ("lora.max_cpu_loras", True) in paths
    assert ("server.host", False) in paths


@pytest.mark.parametrize(
    ("wrong", "quiet_relation"),
    [
        ("lora:\n  enabled: 1\n  max_loras: 2\n", "lora.max_loras"),
        ("server:\n  api_key_env: [K]\n  host: 0.0.0.0\n", "server.host"),
        (
            'maintenance:\n  windows:\n    - {start: "02:00", end: "04:00", tz: Mars/Olympus}\n',
            "maintenance.windows",
        ),
        (
            "lora:\n  enabled: true\n  max_loras: x\n  adapters:\n"
            "    - {name: a, path: /a}\n    - {name: b, path: /b}\n",
            "lora.adapters",
        ),
    ],
)
def test_a_check_between_keys_says_nothing_about_a_wrong_key(
    wrong: str, quiet_relation: str
) -> None:
    """A relation that reads a wrong key is not checked against that key's default."""
    text = "server:\n  python: /v/bin/python\nmodel:\n  path: /models/m\n"
    section = wrong.split(":", 1)[0]
    if section == "server":
        text = text.replace("server:\n", wrong, 1)
    else:
        text += wrong
    problems = _problems(text)
    assert any(problem.is_error for problem in problems)
    assert quiet_relation not in {problem.path for problem in problems}
