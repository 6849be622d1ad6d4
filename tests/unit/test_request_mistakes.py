"""The request mistakes clients make, as the supervisor reports them: `lora_name` (answered by
the base model, the hint naming the served adapters), requests for unknown models (counted by
name, bounded, never feeding another rule), their counts in STATUS=, status and metrics, kept
across restarts of vLLM; and the generated logging config that keeps vLLM's access log."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness import REPO
from niodoo_supervisor.cli.status_view import human
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.control.metrics import SupervisorMetrics
from niodoo_supervisor.launch.vllm_logging import logging_config_for
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.line import split_line
from niodoo_supervisor.logs.request_hints import ServedNames
from niodoo_supervisor.logs.request_mistakes import request_mistakes
from niodoo_supervisor.logs.rule_types import Action, Event
from niodoo_supervisor.logs.rules import RuleSet
from niodoo_supervisor.supervise.status_file import StatusBoard
from rulesamples import SPOOFS, H
from supervise_sim import FakeRun, Sim, boots, event

SERVED = ServedNames("tiny", ("alpha", "beta"))
RULES = RuleSet(served=SERVED)
# vLLM 0.32's line, as captured (tests/fixtures/vllm-logs/07-request-mistakes.log)
UNKNOWN = (
    "(APIServer pid=9769) ERROR 12-01 23:23:36 [serving.py:274] Error with model "
    "error=ErrorInfo(message={}, type='NotFoundError', param='model', code=404)"
)
IGNORED = H + "The following fields were present in the request but ignored: {'lora_name'}"


def scan(text: str, ruleset: RuleSet = RULES) -> list[Event]:
    scanner = ruleset.scanner()
    return scanner.feed(text.encode() + b"\n") + scanner.flush(final=True)


def unknown_line(model: str) -> str:
    """The line vLLM 0.32 logs for `model`: the message is repr-quoted as pydantic does."""
    return UNKNOWN.format(repr(f"The model `{model}` does not exist. Valid aliases: tiny."))


# --- the lora_name hint ----------------------------------------------------------------------


def test_the_lora_name_hint_names_the_served_adapters_and_the_base_model_answer() -> None:
    [ignored] = scan(IGNORED)
    assert "answered by the BASE model (tiny)" in ignored.hint
    assert '"model": "alpha"' in ignored.hint and "served adapters: alpha, beta" in ignored.hint
    assert '"model": "a"' not in ignored.hint


def test_the_lora_name_hint_is_bounded_and_says_when_no_adapter_is_served() -> None:
    many = ServedNames("base", tuple(f"adapter-{i}-" + "x" * 200 for i in range(50)))
    [ignored] = scan(IGNORED, RuleSet(served=many))
    assert "and 45 more" in ignored.hint and len(ignored.hint) < 1000
    [none] = scan(IGNORED, RuleSet(served=ServedNames("base")))
    assert "serves no adapters" in none.hint and "BASE model (base)" in none.hint


# --- unknown models ---------------------------------------------------------------------------


def test_an_unknown_model_is_an_event_with_its_name_and_the_served_names() -> None:
    [found] = scan(unknown_line("nope"))
    assert (found.rule, found.action, found.details) == (
        "unknown_model",
        Action.LOG,
        {"model": "nope"},
    )
    assert "(tiny, alpha, beta)" in found.hint and "404" in found.hint


@pytest.mark.parametrize(
    "model",
    [
        "a`b",  # a backtick inside the name
        "x` does not exist. Valid aliases: y.",  # vLLM's own wording inside the name
        "it's",  # repr then quotes with "
        'say "hi"',
        "two\nlines\r\x1b[31m",  # repr escapes them: the line stays one line
    ],
)
def test_hostile_model_names_are_counted_whole(model: str) -> None:
    [found] = scan(unknown_line(model))
    expected = repr(model)[1:-1] if "\\" in repr(model) else model
    assert found.details == {"model": expected[:64] + ("…" if len(expected) > 64 else "")}


def test_a_100kb_model_name_is_cut_and_still_counted() -> None:
    events = scan(unknown_line("m" * 100_000))
    assert [e.rule for e in events] == ["unknown_model", "line_cut"]
    assert events[0].details == {"model": "m" * 64 + "…"}


@pytest.mark.parametrize("spoof", SPOOFS)
def test_a_model_name_feeds_only_the_unknown_model_rule(spoof: str) -> None:
    [found] = scan(unknown_line(spoof))
    assert found.rule == "unknown_model" and found.action is Action.LOG
    assert RULES.matches(split_line(unknown_line(spoof))) == ["unknown_model"]


def test_unknown_models_are_counted_by_name_within_bounds() -> None:
    counters = EventCounters(clock=lambda: 100.0, max_fields=2)
    for model in ("nope", "nope", "gpt-4", "x" * 500, "third"):
        for found in scan(unknown_line(model)):
            counters.add(found)
    data = counters.as_dict()
    assert data["rules"]["unknown_model"]["count"] == 5
    assert data["unknown_models"] == {"nope": 2, "gpt-4": 1, "(other)": 2}
    assert data["unknown_models_last"]["nope"] == 100.0
    registry = CollectorRegistry()
    metrics = SupervisorMetrics(
        registry, StatusBoard(), states=["READY"], wall=lambda: 0.0, window_wait=lambda: 0.0,
        ignored_fields_top=1,
    )  # fmt: skip
    for model in ("nope", "nope", "gpt-4"):
        metrics.unknown_model(model)
    value = registry.get_sample_value
    assert value("niodoo_supervisor_unknown_model_requests_total", {"model": "nope"}) == 2
    assert value("niodoo_supervisor_unknown_model_requests_total", {"model": "(other)"}) == 1


# --- the counts in STATUS= and status ------------------------------------------------------


def _counted(*lines: str) -> dict[str, Any]:
    """The event counters' dict after vLLM logged `lines`."""
    counters = EventCounters(clock=lambda: 0.0)
    for line in lines:
        for found in scan(line):
            counters.add(found)
    return counters.as_dict()


def _phrases(*lines: str) -> list[str]:
    """The mistakes' phrases after `lines`, each time shown as T."""
    return [re.sub(r"\d\d:\d\d:\d\d", "T", part) for part in request_mistakes(_counted(*lines))]


def test_the_mistakes_read_as_short_phrases_with_the_last_time() -> None:
    assert _phrases(IGNORED, IGNORED, IGNORED, unknown_line("nope")) == [
        "3 requests sent lora_name (last T), answered by the base model",
        "1 request for unknown models (last T)",
    ]
    assert request_mistakes({}) == [] and request_mistakes({"ignored_fields": "junk"}) == []


# The guard's lines as vLLM 0.32 prints them (lora.lora_name_field: route | reject)
ROUTED = H + "lora_name guard: routed to adapter 'alpha'"
REFUSED = H + "lora_name guard: rejected (reject_mode) lora_name='alpha'"


def test_the_guards_routed_and_refused_requests_read_as_phrases() -> None:
    assert _phrases(ROUTED, ROUTED, REFUSED, IGNORED) == [
        "1 request sent lora_name (last T), answered by the base model",
        "2 requests sent lora_name (last T), routed to the adapter it names",
        "1 request sent lora_name (last T), refused by the guard (HTTP 400 or 413)",
    ]
    rules = {"lora_name_rejected": {"count": "3", "last_time": "x"}, "lora_name_routed": []}
    assert request_mistakes({"rules": rules}) == []  # junk from an old or broken status file


def test_the_status_top_lines_show_the_guards_count() -> None:
    status = {"state": "READY", "since": 0, "events": _counted(REFUSED)}
    lines = human(status, True, time.time())
    assert lines[3].startswith("requests:  1 request sent lora_name (last ")
    assert lines[3].endswith("refused by the guard (HTTP 400 or 413)")


def test_the_status_top_lines_show_the_mistakes_and_the_names() -> None:
    status = {"state": "READY", "since": 0, "events": _counted(IGNORED, unknown_line("nope"))}
    lines = human(status, True, time.time())
    assert lines[3].startswith("requests:  1 request sent lora_name (last ")
    assert "unknown models requested: nope x1" in lines


def _statuses(sim: Sim) -> list[str]:
    return [f for n in sim.notifier.sent for f in n.fields if f.startswith("STATUS=")]


def test_the_counts_reach_status_and_survive_a_restart_of_vllm(tmp_path: Path) -> None:
    lora = event("ignored_request_fields", Action.LOG, "lora_name", fields=["lora_name"])
    nope = event("unknown_model", Action.LOG, "nope", model="nope")

    def crash(run: FakeRun) -> None:
        run.sim.after(15, lambda: run.exit(1))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=crash), boots(5.0)])
    sim.at(10, lambda: sim.runs[0].say("x", lora, nope))
    sim.at(60, lambda: sim.runs[-1].say("x", lora))
    sim.at(80, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    assert len(sim.runs) == 2
    ready = "STATUS=ready: serving tiny with adapters a, b on 127.0.0.1:8000"
    texts = [re.sub(r"\d\d:\d\d:\d\d", "T", text) for text in _statuses(sim)]
    once = "1 request sent lora_name (last T), answered by the base model"
    twice = "2 requests sent lora_name (last T), answered by the base model"
    nope_text = "1 request for unknown models (last T)"
    assert texts.count(ready) == 1  # the first start, before any mistake
    assert f"{ready}; {once}; {nope_text}" in texts  # at the next check, then on a new start
    assert texts.count(f"{ready}; {once}; {nope_text}") == 2
    assert f"{ready}; {twice}; {nope_text}" in texts  # the second run's, at its next check


# --- the generated logging config keeps uvicorn's logging ---------------------------------


def test_the_generated_config_keeps_uvicorns_default_logging() -> None:
    config = logging_config_for(Version(0, 32, 0))
    assert config["loggers"]["uvicorn"] == {
        "handlers": ["default"], "level": "INFO", "propagate": False,
    }  # fmt: skip
    assert config["loggers"]["uvicorn.access"]["handlers"] == ["access"]
    assert config["loggers"]["uvicorn.error"] == {"level": "INFO"}
    # uvicorn sets use_colors on these two names when asked: they must exist.
    assert {"default", "access"} <= set(config["formatters"])
    assert json.loads(json.dumps(config)) == config


def test_the_generated_config_prints_uvicorns_lines_without_colours(tmp_path: Path) -> None:
    """dictConfig in a fresh interpreter with the fake vLLM's uvicorn and vLLM formatters."""
    script = """
import json, logging, logging.config, sys
logging.config.dictConfig(json.loads(sys.argv[1]))
logging.getLogger("uvicorn.error").info("Application startup complete.")
logging.getLogger("uvicorn.access").info(
    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:4242", "POST", "/v1/chat/completions", "1.1", 404)
logging.getLogger("vllm.x").info("vLLM line")
logging.getLogger("vllm.x").debug("hidden")
"""
    # 0.30: no %(vllm_process_name)s, which only vLLM itself sets
    config = json.dumps(logging_config_for(Version(0, 30, 0)))
    out = subprocess.run(
        [sys.executable, "-c", script, config], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO / "tests" / "fakevllm")}, check=True,
    )  # fmt: skip
    assert out.stderr == "INFO:     Application startup complete.\n"
    access, vllm = out.stdout.splitlines()
    assert access == 'INFO:     127.0.0.1:4242 - "POST /v1/chat/completions HTTP/1.1" 404 Not Found'
    assert vllm.endswith("vLLM line") and "hidden" not in out.stdout
    assert "\x1b" not in out.stdout + out.stderr


def test_a_captured_serving_log_gives_startup_complete_lora_name_and_unknown_model() -> None:
    """vLLM 0.32 under the generated config (the e2e run's capture): uvicorn's lines parse,
    "Application startup complete." is the last phase, access lines give no event."""
    text = (REPO / "tests" / "fixtures" / "vllm-logs" / "07-request-mistakes.log").read_text()
    events = scan(text)
    assert [e.rule for e in events] == [
        "lora_loaded", "lora_loaded", "listening", "routes", "startup_complete",
        "ignored_request_fields", "unknown_model",
    ]  # fmt: skip
    assert events[-1].details == {"model": "nope"} and events[-1].pid == 15211
    assert "answered by the BASE model (tiny)" in events[-2].hint
