"""The rule table against real vLLM lines, operator rules, and chunked scanning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from niodoo_supervisor.logs import rules
from niodoo_supervisor.logs.builtin_rules import BUILTIN_RULES, PHASES
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.line import assemble, split_line
from niodoo_supervisor.logs.operator_rules import compile_user_rules, required_literals
from niodoo_supervisor.logs.rule_types import Action, Event, Rule, Severity
from niodoo_supervisor.logs.rules import RuleSet
from rulesamples import SAMPLES, SPOOFS, E, H

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-logs"
RULES = RuleSet()


def scan(data: bytes, ruleset: RuleSet = RULES) -> list[Event]:
    scanner = ruleset.scanner()
    return scanner.feed(data) + scanner.flush(final=True)


def fixture(name: str) -> bytes:
    return (LOGS / name).read_bytes()


def by_rule(events: list[Event], rule: str) -> list[Event]:
    return [e for e in events if e.rule == rule]


# --- real captured logs --------------------------------------------------------------


def test_rank_too_big_is_fatal_with_rank_and_max() -> None:
    events = scan(fixture("05-rank-too-big.log"))
    ranks = by_rule(events, "lora_rank_too_big")
    # Worker, EngineCore and API server each report it: one event per record, not per line.
    assert [e.process for e in ranks] == ["Worker", "EngineCore", None]
    for event in ranks:
        assert event.action is Action.FATAL and event.severity is Severity.CRITICAL
        assert event.details == {"rank": 64, "max_lora_rank": 16}
        assert "max_lora_rank" in event.hint
    worker = ranks[0]
    assert len(worker.lines) == 42 and worker.lines[0].endswith("WorkerProc hit an exception.")
    assert [e.process for e in by_rule(events, "lora_load_failed")] == ["EngineCore", None]


def test_removed_flag_is_an_argparse_fatal() -> None:
    [event] = scan(fixture("04-removed-flag.log"))
    assert (event.rule, event.action) == ("cli_argument_error", Action.FATAL)
    assert event.details == {
        "prog": "api_server.py",
        "reason": "unrecognized arguments: --swap-space",
    }
    assert event.lines == ("api_server.py: error: unrecognized arguments: --swap-space",)


def test_port_in_use_is_fatal_with_its_traceback() -> None:
    [event] = by_rule(scan(fixture("06-port-in-use.log")), "address_in_use")
    assert event.action is Action.FATAL and event.details == {"errno": 98}
    assert event.lines[0] == "Traceback (most recent call last):"
    assert event.lines[-1] == "OSError: [Errno 98] Address already in use"


def test_engine_death_checks_now_once_per_record() -> None:
    events = scan(fixture("02-enginecore-killed.log"))
    deaths = [e for e in events if e.action is Action.CHECK_NOW]
    assert [e.rule for e in deaths] == ["engine_core_died", "engine_dead"]
    dead = deaths[1]
    assert dead.severity is Severity.CRITICAL and dead.process == "APIServer"
    assert len(dead.lines) == 8 and "Traceback (most recent call last):" in dead.lines[1]
    assert (
        deaths[0].message
        == "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup"
    )


def test_start_phases_in_order_and_adapters_loaded() -> None:
    events = scan(fixture("02-enginecore-killed.log"))
    phases = [e.details["phase"] for e in events if e.action is Action.PHASE]
    assert phases == [
        "starting", "engine_init", "loading_weights", "loading_weights", "loading_weights",
        "weights_loaded", "kv_cache", "engine_ready", "adapter_loaded", "adapter_loaded",
        "listening", "routes", "startup_complete",
    ]  # fmt: skip
    # tqdm's bar: one line per update, each starting with its "\r"
    shards = by_rule(events, "weight_shards")
    assert [(e.details["done"], e.details["total"]) for e in shards] == [(0, 1), (1, 1)]
    assert shards[1].message.startswith("Loading safetensors checkpoint shards: 100% Completed")
    assert [p for p in PHASES if p in phases] == list(dict.fromkeys(phases))
    loaded = by_rule(events, "lora_loaded")
    assert [(e.details["adapter"], e.details["path"]) for e in loaded] == [
        ("a", "models/adapter-a"),
        ("b", "models/adapter-b"),
    ]
    [version] = by_rule(events, "version")
    assert version.details["version"] == "0.32.0"
    [listening] = by_rule(events, "listening")
    assert listening.details["address"] == "http://127.0.0.1:8011"


def test_lora_name_field_is_reported_with_the_model_hint() -> None:
    events = scan(fixture("01-start-requests-sigterm.log"))
    [ignored] = by_rule(events, "ignored_request_fields")
    assert ignored.details == {"fields": ["lora_name"]}
    assert "`model`" in ignored.hint and "lora_name" in ignored.hint


def _heads(lines: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(line[: rules.MAX_TEXT] for line in lines)  # events cut long lines


@pytest.mark.parametrize("name", sorted(p.name for p in LOGS.glob("*.log")))
def test_scanner_agrees_with_brute_force(name: str) -> None:
    """Anchors never hide a match: every rule tried on every line gives the same."""
    data = fixture(name)
    records = assemble(data.decode().split("\n")[:-1])
    brute = []
    for record in records:
        names = [n for line in record.lines for n in RULES.matches(split_line(line))]
        brute += [(n, _heads(record.lines)) for n in dict.fromkeys(names)]
    got = [(e.rule, _heads(e.lines)) for e in scan(data)]
    assert sorted(got, key=str) == sorted(brute, key=str)


# --- every rule against its real wording ------------------------------------------------


@pytest.mark.parametrize(("line", "rule", "details"), SAMPLES)
def test_rule_samples(line: str, rule: str, details: dict[str, Any]) -> None:
    events = scan((line + "\n").encode())
    assert [e.rule for e in events] == [rule]
    assert events[0].details == details


def test_every_builtin_rule_has_a_sample() -> None:
    assert {rule for _, rule, _ in SAMPLES} == {r.name for r in BUILTIN_RULES}


def test_access_and_throughput_lines_are_quiet() -> None:
    lines = [
        'INFO:     127.0.0.1:54898 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "(APIServer pid=1) INFO 11-24 00:00:00 [loggers.py:1] Engine 000: Avg prompt "
        "throughput: 10.0 tokens/s, Avg generation throughput: 5.0 tokens/s, Running: 1 reqs, "
        "Waiting: 0 reqs, GPU KV cache usage: 0.1%, Prefix cache hit rate: 0.0%",
        "(APIServer pid=1) INFO 11-24 00:00:00 [logger.py:1] Received request cmpl-1: "
        "params: SamplingParams(n=1, guided_decoding=None), lora_request: None.",
    ]
    assert scan("\n".join(lines * 50).encode()) == []


def test_clients_cannot_fake_events_through_logged_requests() -> None:
    lines = [
        'INFO:     10.0.0.7:4242 - "GET /EngineDeadError HTTP/1.1" 404 Not Found',
        'INFO:     10.0.0.7:4242 - "GET /LoRA rank 64 is greater than max_lora_rank 16 '
        'HTTP/1.1" 404 Not Found',
        "(APIServer pid=1) INFO 11-24 00:00:00 [logger.py:1] Received request cmpl-1: prompt: "
        "'The following fields were present in the request but ignored: {'x'}', params: x",
    ]
    assert scan("\n".join(lines).encode()) == []
    # the same texts as vLLM writes them still count
    assert len(scan(b"ValueError: LoRA rank 64 is greater than max_lora_rank 16.\n")) == 1


def test_ignored_guided_fields_get_the_structured_outputs_hint() -> None:
    [event] = scan(
        (
            H + "The following fields were present in the request but ignored: {'guided_json'}\n"
        ).encode()
    )
    hints = {rule.name: rule.hint for rule in BUILTIN_RULES}
    # The rule's own hint and the structured-outputs one, and nothing else (no lora_name hint).
    assert "structured_outputs" in hints["removed_guided_fields"]
    assert event.hint == f"{hints['ignored_request_fields']} {hints['removed_guided_fields']}"


def test_old_prefixed_traceback_gives_one_death_event() -> None:
    p = "(EngineCore_DP0 pid=7) "
    text = (
        f"{p}ERROR 08-01 10:00:00 [core.py:711] EngineCore encountered a fatal error.\r\n"
        f"{p}ERROR 08-01 10:00:00 [core.py:711] Traceback (most recent call last):\r\n"
        f'{p}ERROR 08-01 10:00:00 [core.py:711]   File "core.py", line 1, in run\r\n'
        f"{p}ERROR 08-01 10:00:00 [core.py:711] vllm.v1.engine.exceptions.EngineDeadError: x\n"
        f"{p}Process EngineCore_DP0:\n"
        f"{p}Traceback (most recent call last):\n"
        f'{p}  File "process.py", line 314, in _bootstrap\n'
        f"{p}EngineDeadError: again\n"
        "(APIServer pid=1) INFO 08-01 10:00:01 [api_server.py:1] next\n"
    )
    events = scan(text.encode())
    assert [(e.rule, len(e.lines)) for e in events] == [
        ("engine_fatal_error", 4),
        ("engine_dead", 4),
        ("engine_dead", 4),
    ]
    assert {e.process for e in events} == {"EngineCore_DP0"}


# --- hostile input: client-controlled text ---------------------------------------------

IGNORED = H + "The following fields were present in the request but ignored: "
LISTENING = H + "Starting vLLM server on http://127.0.0.1:8000"


def ignored_line(*names: str) -> bytes:
    return (IGNORED + "{" + ", ".join(map(repr, names)) + "}\n").encode()


@pytest.mark.parametrize("spoof", SPOOFS)
def test_a_field_name_feeds_only_the_ignored_fields_rule(spoof: str) -> None:
    [event] = scan(ignored_line(spoof))
    assert event.rule == "ignored_request_fields" and event.action is Action.LOG
    assert event.details["fields"] == [spoof[:64] + ("…" if len(spoof) > 64 else "")]


@pytest.mark.parametrize("spoof", SPOOFS)
def test_client_text_quoted_inside_a_vllm_line_acts_on_nothing(spoof: str) -> None:
    lines = [
        H + f"Error with model 'x': {spoof}",  # vLLM's wording first, the client's after
        H + f"Aborted request {spoof}.",  # a request id the client chose (X-Request-Id)
        H + f"Received request chatcmpl-1: prompt: {spoof!r}, params: x",
        f'INFO:     10.0.0.7:4242 - "GET /{spoof} HTTP/1.1" 404 Not Found',
    ]
    assert scan("\n".join(lines).encode() + b"\n") == []


def test_fatal_lines_act_only_before_vllm_serves_requests() -> None:
    rank = b"ValueError: LoRA rank 32 is greater than max_lora_rank 16.\n"
    [before] = scan(rank)
    assert before.action is Action.FATAL
    events = scan(
        LISTENING.encode() + b"\n" + rank + (E + "EngineCore encountered a fatal error.\n").encode()
    )
    [after] = by_rule(events, "lora_rank_too_big")
    # once vLLM serves requests a client may have caused the line: reported, not acted on
    assert after.action is Action.LOG and after.severity is Severity.CRITICAL
    assert after.details["not_acted_on"] == "fatal" and "not acted on" in after.hint
    # an engine's death is still acted on
    assert [e.action for e in by_rule(events, "engine_fatal_error")] == [Action.CHECK_NOW]


def test_every_rule_runs_on_a_linear_time_engine() -> None:
    # RE2 guarantees time linear in the text for any pattern (no backtracking); the built-in
    # patterns and every operator pattern are compiled with it.
    from niodoo_supervisor.logs.operator_rules import compile_linear

    for rule in BUILTIN_RULES:
        assert type(compile_linear(rule.pattern)).__module__ == "re2", rule.name
    _, errors = compile_user_rules([rule_item(pattern=r"(?<=x)Killed process (\d+)")])
    assert errors == [
        "rules[0].pattern: invalid perl operator: (?<=: rules run on RE2 (linear time), "
        "which has no look-around or back-references; rewrite the pattern without them"
    ]


def test_a_pattern_re2_refuses_gets_the_fix_for_its_reason() -> None:
    _, errors = compile_user_rules(
        [rule_item(pattern="Killed a{1000000}"), rule_item(pattern=r"(Killed) \1")]
    )
    assert errors == [
        "rules[0].pattern: invalid repetition size: {1000000}: rules run on RE2 (linear time), "
        "which allows at most 1000 repetitions; use a smaller count or `+`/`*`",
        "rules[1].pattern: invalid escape sequence: \\1: rules run on RE2 (linear time), "
        "which has no look-around or back-references; rewrite the pattern without them",
    ]


def test_a_huge_field_name_is_cut_before_matching_and_counted() -> None:
    line = ignored_line("x" * 100_000 + " is not a local folder", "lora_name")
    scanner = RULES.scanner()
    events = scanner.feed(line[:70_000]) + scanner.feed(line[70_000:])
    events += scanner.flush(final=True)
    assert [e.rule for e in events] == ["ignored_request_fields", "line_cut"]
    ignored, cut = events
    # the names in the first 16 KiB of the line; cut short, with a marker
    assert ignored.details["fields"] == ["x" * 64 + "…"]
    assert cut.details == {"bytes": len(line) - 1} and cut.severity is Severity.WARNING
    assert scanner.cut_lines == 1
    for event in events:
        assert len(event.message) < rules.MAX_TEXT + 60
        assert all(len(text) < rules.MAX_TEXT + 60 for text in event.lines)


def test_many_names_and_huge_names_keep_events_counters_and_status_small() -> None:
    counters = EventCounters()
    scanner = RULES.scanner()
    [event] = scan(ignored_line(*(f"f{i}" for i in range(1000))))
    assert len(event.details["fields"]) == 32 and event.details["more_fields"] == 968
    counters.add(event)
    events = []
    for i in range(400):  # 400 requests, each with a distinct 64 KiB field name
        events += scanner.feed(ignored_line(f"{i:04d}" + "y" * (64 << 10)))
    events += scanner.flush(final=True)
    assert len(events) == 800  # ignored_request_fields and line_cut, each time
    for found in events:
        counters.add(found)
        assert len(json.dumps(found.as_dict())) < 8 << 10
    status = counters.as_dict()
    assert len(status["ignored_fields"]) <= 201 and "(other)" in status["ignored_fields"]
    assert max(map(len, status["ignored_fields"])) <= 65
    assert len(json.dumps(status)) < 32 << 10
    assert sum(status["ignored_fields"].values()) == 1000 + 400


def test_operator_rules_fatal_at_message_start_log_anywhere() -> None:
    ruleset, errors = operator_ruleset(
        [rule_item(), rule_item(name="oom_seen", action="log", pattern="Killed process")]
    )
    assert errors == []
    assert [e.rule for e in scan(b"Killed process 1 (python)\n", ruleset)] == [
        "oom_kill", "oom_seen"]  # fmt: skip
    mid_line = (H + "note: Killed process 1\n").encode()
    assert [e.rule for e in scan(mid_line, ruleset)] == ["oom_seen"]
    assert [e.rule for e in scan(ignored_line("Killed process 1"), ruleset)] == [
        "ignored_request_fields"]  # fmt: skip


# --- chunk boundaries ---------------------------------------------------------------------

_ALL = (
    b"".join(fixture(p.name) for p in sorted(LOGS.glob("*.log")))
    + "".join(line + "\n" for line, _, _ in SAMPLES).encode()
)
_WHOLE = [e.as_dict() for e in scan(_ALL)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(_ALL)), max_size=40))
def test_chunk_boundaries_do_not_change_events(cuts: list[int]) -> None:
    scanner = RULES.scanner()
    events: list[Event] = []
    start = 0
    for cut in sorted(cuts):
        events += scanner.feed(_ALL[start:cut])
        start = cut
    events += scanner.feed(_ALL[start:]) + scanner.flush(final=True)
    assert [e.as_dict() for e in events] == _WHOLE


def test_early_flush_does_not_repeat_a_rule() -> None:
    scanner = RULES.scanner()
    head = f"{E}EngineCore encountered a fatal error.\r\n{E}Traceback (most recent call last):\r\n"
    assert scanner.feed(head.encode()) == []
    assert [e.rule for e in scanner.flush()] == ["engine_fatal_error"]
    tail = f"{E}EngineDeadError: x\r\n{E}EngineCore encountered a fatal error.\nINFO:     x\n"
    assert [e.rule for e in scanner.feed(tail.encode())] == ["engine_dead"]
    assert scanner.flush(final=True) == []


# --- counters -----------------------------------------------------------------------------


def test_counters_count_each_ignored_field() -> None:
    text = "".join(
        H + f"The following fields were present in the request but ignored: {fields}\n"
        for fields in ("{'lora_name', 'x'}", "{'lora_name'}", "{\"it's\", 'lora_name'}")
    )
    counters = EventCounters(clock=lambda: 42.0, max_fields=2)
    for event in scan(text.encode()):
        counters.add(event)
    data = counters.as_dict()
    assert data["rules"]["ignored_request_fields"]["count"] == 3
    assert data["rules"]["ignored_request_fields"]["last_time"] == 42.0
    assert data["rules"]["ignored_request_fields"]["last_line"].endswith("'lora_name'}")
    # max_fields=2: the third distinct name is counted as "(other)"
    assert data["ignored_fields"] == {"lora_name": 3, "x": 1, "(other)": 1}


# --- operator rules -----------------------------------------------------------------------


def rule_item(**over: Any) -> dict[str, Any]:
    item = {"name": "oom_kill", "pattern": r"Killed process (\d+)", "severity": "error",
            "action": "check_now", "hint": "see dmesg"}  # fmt: skip
    item.update(over)
    return {k: v for k, v in item.items() if v is not None}


def operator_ruleset(items: list[dict[str, Any]]) -> tuple[RuleSet, list[str]]:
    """The built-in rules plus the operator's, built as the config loader and `run` do."""
    user, errors = compile_user_rules(items, "rules")
    return RuleSet(user), errors


def test_user_rule_compiles_and_fires() -> None:
    ruleset, errors = operator_ruleset([rule_item()])
    assert errors == []
    [event] = scan(b"Killed process 123 (python)\n", ruleset)
    assert (event.rule, event.action, event.severity, event.hint) == (
        "oom_kill", Action.CHECK_NOW, Severity.ERROR, "see dmesg")  # fmt: skip
    [rule] = [r for r in ruleset.rules if r.name == "oom_kill"]
    assert rule.anchors == ("Killed process ",)


def test_user_rule_defaults_and_phase() -> None:
    rules, errors = compile_user_rules(
        [{"name": "warm", "pattern": "warmup done", "action": "phase"}]
    )
    assert errors == []
    assert rules == [
        Rule(
            "warm",
            "warmup done",
            Severity.WARNING,
            Action.PHASE,
            "",
            ("warmup done",),
            "warm",
            anywhere=True,
        )
    ]


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ({"a": 1}, "rules: must be a list of rules, got dict"),
        (["x"], "rules[0]: must be a mapping with name, pattern, severity, action, hint"),
        ([{}, {}, rule_item(pattern="abc[")],
         "rules[2].pattern: invalid regex: unterminated character set at position 3; "
         "fix the pattern"),
        ([rule_item(severity="loud")],
         "rules[0].severity: must be one of info, warning, error, critical, got 'loud'"),
        ([rule_item(action="reboot")],
         "rules[0].action: must be one of log, phase, check_now, fatal, got 'reboot'"),
        ([rule_item(colour="red")],
         "rules[0].colour: unknown key; expected one of name, pattern, severity, action, hint, "
         "phase, anchors"),
        ([rule_item(name="Bad Name")],
         "rules[0].name: must be a lower-case identifier like 'my_rule', got 'Bad Name'"),
        ([rule_item(), rule_item()], "rules[1].name: 'oom_kill' is already used by rules[0]"),
        ([rule_item(name="engine_dead")],
         "rules[0].name: 'engine_dead' is already used by a built-in rule"),
        ([rule_item(pattern=r"(?i)killed")],
         "rules[0].pattern: has no fixed text of 3+ characters that every match contains "
         "(needed to scan fast); add one, or list such texts in `anchors`"),
        ([rule_item(anchors=["ab"])],
         "rules[0].anchors: must be a list of texts of 3+ characters"),
        ([rule_item(hint=3)], "rules[0].hint: must be text"),
    ],
)  # fmt: skip
def test_user_rule_errors(items: object, error: str) -> None:
    _, errors = compile_user_rules(items)
    assert error in errors
    assert all(e.count(": ") >= 1 and "\n" not in e for e in errors)


def test_user_rule_errors_name_the_given_path() -> None:
    _, errors = compile_user_rules([rule_item(pattern="(")], path="logs.rules")
    assert errors == ["logs.rules[0].pattern: invalid regex: missing ), unterminated subpattern "
                      "at position 0; fix the pattern"]  # fmt: skip


def test_explicit_anchors_allow_any_pattern() -> None:
    ruleset, errors = operator_ruleset([rule_item(pattern=r"(?i)killed \w+", anchors=["illed"])])
    assert errors == []
    assert [e.rule for e in scan(b"KILLED it\nkilled it\n", ruleset)] == ["oom_kill"]


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"Killed process (\d+)", ("Killed process ",)),
        (r"abc(?:defgh|ijklm)x", ("defgh", "ijklm")),
        (r"ab|cde", None),
        (r"(?:foo|barbaz)\d+qux", ("qux",)),
        (r"(?:food|barbaz)\d+qux", ("barbaz", "food")),
        (r"x+yyyy", ("yyyy",)),
        (r"a.*b", None),
        (r"(?i)hello", None),
        (r"(", None),
    ],
)
def test_required_literals(pattern: str, literals: tuple[str, ...] | None) -> None:
    assert required_literals(pattern) == literals


def test_builtin_anchors_are_required_by_their_patterns() -> None:
    for rule in BUILTIN_RULES:
        assert rule.anchors and all(len(a) >= 7 for a in rule.anchors), rule.name
    for line, rule_name, _ in SAMPLES:
        rule = next(r for r in BUILTIN_RULES if r.name == rule_name)
        assert any(a in line for a in rule.anchors), rule_name


def test_an_access_line_with_vllms_header_feeds_no_operator_rule() -> None:
    # An operator's logging config may route uvicorn's access log through vLLM's formatter;
    # the path in it is still the client's text.
    ruleset, errors = operator_ruleset(
        [rule_item(name="slow", pattern="slow path", action="log", severity="warning")]
    )
    assert errors == []
    access = H + '10.0.0.7:4242 - "GET /slow path HTTP/1.1" 404 Not Found\n'
    assert scan(access.encode(), ruleset) == []
    assert [e.rule for e in scan((H + "a slow path was taken\n").encode(), ruleset)] == ["slow"]
