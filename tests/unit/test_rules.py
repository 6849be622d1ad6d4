"""The rule table against real vLLM lines, operator rules, and chunked scanning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from niodoo_supervisor.logparse import assemble
from niodoo_supervisor.rules import (
    BUILTIN_RULES,
    PHASES,
    Action,
    Event,
    EventCounters,
    Rule,
    RuleSet,
    Severity,
    compile_user_rules,
    required_literals,
)

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
        "starting", "engine_init", "loading_weights", "weights_loaded", "kv_cache",
        "engine_ready", "adapter_loaded", "adapter_loaded", "listening", "routes",
        "startup_complete",
    ]  # fmt: skip
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


@pytest.mark.parametrize("name", sorted(p.name for p in LOGS.glob("*.log")))
def test_scanner_agrees_with_brute_force(name: str) -> None:
    """Anchors never hide a match: every rule regex run on every record gives the same."""
    data = fixture(name)
    records = assemble(data.decode().split("\n")[:-1])
    brute = []
    for record in records:
        for rule in RULES.rules:
            if any(re.search(rule.pattern, m) for m in record.message.split("\n")):
                brute.append((rule.name, record.lines))
    got = [(e.rule, e.lines) for e in scan(data)]
    assert sorted(got, key=str) == sorted(brute, key=str)


# --- every rule against its real wording ------------------------------------------------

H = "(APIServer pid=1) INFO 11-24 00:00:00 [x.py:1] "
E = "(EngineCore_DP0 pid=7) ERROR 08-01 10:00:00 [core.py:1] "
SAMPLES: list[tuple[str, str, dict[str, Any]]] = [
    (H + "The following fields were present in the request but ignored: {'lora_name', 'x'}",
     "ignored_request_fields", {"fields": ["lora_name", "x"]}),
    (H + "Request contains the removed guided-decoding field(s) ['guided_json'], which are "
     "ignored; output will NOT be constrained. Use `structured_outputs` (or `response_format`) "
     "instead; see docs/features/structured_outputs.md.",
     "removed_guided_fields", {"fields": ["guided_json"]}),
    (E + "EngineCore encountered a fatal error.", "engine_fatal_error", {}),
    ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
     "engine_dead", {}),
    (H + "Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.",
     "engine_core_died", {"engine": "EngineCore_DP0"}),
    (E + "Worker proc VllmWorker-0 died unexpectedly (exit code: -9), shutting down executor.",
     "worker_died", {"worker": "VllmWorker-0", "exit_code": -9}),
    (E + "EngineCore failed to start.", "engine_start_failed", {}),
    ("RuntimeError: Engine core initialization failed. See root cause above. Failed core "
     "proc(s): {'EngineCore_DP0': 1}", "engine_start_failed", {}),
    ("RuntimeError: Unsupported CPU attention configuration: head_dim=16",
     "cpu_attention_unsupported", {"config": "head_dim=16"}),
    ("vllm serve: error: argument --max-lora-rank: invalid choice: 7 (choose from 1, 8, 16)",
     "cli_argument_error",
     {"prog": "vllm serve", "reason": "argument --max-lora-rank: invalid choice: 7 (choose "
      "from 1, 8, 16)"}),
    ("ValueError: LoRA rank 32 is greater than max_lora_rank 16.", "lora_rank_too_big",
     {"rank": 32, "max_lora_rank": 16}),
    ("ValueError: max_cpu_loras (1) must be >= max_loras (2).", "lora_config_invalid",
     {"max_cpu_loras": 1, "max_loras": 2}),
    ("OSError: [Errno 98] Address already in use", "address_in_use", {"errno": 98}),
    ("ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): "
     "address already in use", "address_in_use", {"errno": 98}),
    ("ValueError: Invalid repository ID or local directory specified: 'models/nope'.",
     "model_path_invalid", {"path": "models/nope"}),
    ("OSError: models/x does not appear to have a file named config.json. Checkout "
     "'https://huggingface.co/models/x/tree/None' for available files.",
     "model_path_invalid", {"path": "models/x", "file": "config.json"}),
    ("OSError: nope is not a local folder and is not a valid model identifier listed on "
     "'https://huggingface.co/models'", "model_path_invalid", {"path": "nope"}),
    ("FileNotFoundError: [Errno 2] No such file or directory: 'models/a/adapter_config.json'",
     "file_not_found", {"path": "models/a/adapter_config.json"}),
    ("vllm.exceptions.LoRAAdapterNotFoundError: Loading lora a failed: No adapter found for "
     "/srv/a", "adapter_not_found", {"adapter": "a", "path": "/srv/a"}),
    ("ValueError: Quantization method specified in the model config (awq) does not match the "
     "quantization method specified in the `quantization` argument (gptq).",
     "quantization_mismatch", {"checkpoint": "awq", "argument": "gptq"}),
    ("ValueError: No available memory for the cache blocks. Try increasing "
     "`gpu_memory_utilization` when initializing the engine.", "no_kv_cache_memory", {}),
    ("ValueError: To serve at least one request with the model's max seq len (32768), (1.75 "
     "GiB KV cache is needed, which is larger than the available KV cache memory (0.86 GiB). "
     "Based on the available memory, the estimated maximum model length is 16000. Try "
     "increasing `gpu_memory_utilization`", "kv_cache_too_small",
     {"max_model_len": 32768, "estimated_max_model_len": 16000}),
    ("ValueError: The model's max seq len (4096) is larger than the maximum number of tokens "
     "that can be stored in KV cache (2000). Try increasing `gpu_memory_utilization` or "
     "decreasing `max_model_len` when initializing the engine.", "kv_cache_too_small",
     {"max_model_len": 4096}),
    ("ValueError: Free memory on device cuda:0 (10.5/79.19 GiB) on startup is less than "
     "desired GPU memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or "
     "reduce GPU memory used by other processes.", "gpu_memory_busy",
     {"device": "cuda:0", "free": 10.5, "total": 79.19}),
    ("ValueError: Free memory on device (10.5/79.19 GiB) on startup is less than desired GPU "
     "memory utilization (0.9, 71.27 GiB).", "gpu_memory_busy", {"free": 10.5, "total": 79.19}),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
     "cuda_out_of_memory", {}),
    (H + "Loaded new LoRA adapter: name 'a', path '/srv/a'", "lora_loaded",
     {"adapter": "a", "path": "/srv/a", "phase": "adapter_loaded"}),
    (H + "Removed LoRA adapter: name '7'", "lora_removed", {"adapter": "7"}),
    (E + "Invocation of add_lora method failed", "lora_load_failed", {}),
    ("INFO 07-24 22:45:01 [api_server.py:1] vLLM API server version 0.10.0", "version",
     {"version": "0.10.0", "phase": "starting"}),
    (H + "vLLM server version 0.32.0, serving model tiny", "version",
     {"version": "0.32.0", "phase": "starting"}),
    (E + "Initializing a V1 LLM engine (v0.10.2) with config: model='m'", "engine_init",
     {"version": "0.10.2", "phase": "engine_init"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [gpu_model_runner.py:1] Starting to load model "
     "Qwen/Qwen2.5-7B-Instruct-AWQ...", "weights_loading",
     {"model": "Qwen/Qwen2.5-7B-Instruct-AWQ", "phase": "loading_weights"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [default_loader.py:1] Loading weights took 12.35 "
     "seconds", "weights_loaded", {"seconds": 12.35, "phase": "weights_loaded"}),
    (E + "GPU KV cache size: 123,456 tokens", "kv_cache_sized",
     {"device": "GPU", "tokens": 123456, "phase": "kv_cache"}),
    (E + "init engine (profile, create kv cache, warmup model) took 41.20 seconds",
     "engine_ready", {"seconds": 41.2, "phase": "engine_ready"}),
    ("INFO 07-24 22:45:01 [api_server.py:1] Starting vLLM API server 0 on http://0.0.0.0:8000",
     "listening", {"address": "http://0.0.0.0:8000", "phase": "listening"}),
    (H + "Available routes are:", "routes", {"phase": "routes"}),
    ("INFO:     Application startup complete.", "startup_complete", {"phase": "startup_complete"}),
]  # fmt: skip


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
    assert "structured_outputs" in event.hint and "lora_name" not in event.hint


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


def test_user_rule_compiles_and_fires() -> None:
    ruleset, errors = RuleSet.from_config([rule_item()])
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
        Rule("warm", "warmup done", Severity.WARNING, Action.PHASE, "", ("warmup done",), "warm")
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
    ruleset, errors = RuleSet.from_config([rule_item(pattern=r"(?i)killed \w+", anchors=["illed"])])
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
    # each pass over a chunk costs the same: keep the number of distinct first bytes small
    assert len({a[:1] for a in RULES.anchors}) <= 16
    for line, rule_name, _ in SAMPLES:
        rule = next(r for r in BUILTIN_RULES if r.name == rule_name)
        assert any(a in line for a in rule.anchors), rule_name
