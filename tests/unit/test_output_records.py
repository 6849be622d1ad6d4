"""The records' renderings: a short console line for a person, logfmt or JSON with every field
for the journal, the format `auto` picks, and the level of a vLLM event."""

from __future__ import annotations

import json
import os
import pty
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from niodoo_supervisor.config.loader import parse_config
from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.output import records as records_module
from niodoo_supervisor.output.console import VALUE_LIMIT, render_console
from niodoo_supervisor.output.records import configure_logging, echo_wanted, resolve_format
from niodoo_supervisor.output.writer import OutputWriter
from niodoo_supervisor.supervise.vllm_events import VllmEventLog

LORA_LINE = "The following fields were present in the request but ignored: {'lora_name'}"


def vllm_event(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "timestamp": "2026-12-02T02:19:09.454080",
        "level": "warning",
        "event": "vllm_event",
        "rule": "ignored_request_fields",
        "severity": "warning",
        "action": "log",
        "process": "APIServer",
        "vllm_pid": 29512,
        "details": {"fields": ["lora_name"]},
        "hint": "Clients send request fields this vLLM does not know.",
        "line": LORA_LINE,
    }
    return {**fields, **overrides}


def test_the_console_shows_the_few_fields_that_matter() -> None:
    line = render_console(vllm_event(), colour=False)
    assert line == (
        "02:19:09 warning  vllm_event rule=ignored_request_fields fields=lora_name "
        'hint="Clients send request fields this vLLM does not know."'
    )
    assert "line=" not in line and "29512" not in line  # the log file and journal have them


def test_a_summary_is_shown_bare_and_an_event_without_a_row_shows_every_field() -> None:
    line = render_console(
        {"timestamp": "2026-12-02T02:19:11.62", "level": "info", "event": "rowless_event",
         "summary": "adapter a changes the output", "adapter": "a", "largest_delta": 0.2},
        colour=False,
    )  # fmt: skip
    assert (
        line
        == "02:19:11 info     rowless_event adapter a changes the output adapter=a largest_delta=0.2"
    )


def test_client_text_is_clipped_and_cannot_forge_a_line_or_drive_the_terminal() -> None:
    hostile = "x" * 50 + "\n02:00:00 critical fake\x1b[2J\u202e" + "y" * 500
    line = render_console(vllm_event(details={"fields": [hostile]}), colour=False)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    shown = line.split("fields=")[1].split(" hint=")[0].strip('"')
    assert len(shown) == VALUE_LIMIT and shown.endswith("…")
    assert shown.startswith("x" * 50 + "\\n02:00:00 critical fake\\x1b[2J\\u202e")


def test_colour_marks_the_level_only_when_asked() -> None:
    assert "\x1b[33mwarning" in render_console(vllm_event(), colour=True)
    assert "\x1b" not in render_console(vllm_event(), colour=False)


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, int]]:
    """A file for records; structlog's configuration and the process's writer are put back
    afterwards (the same processor list: `capture_logs` in later tests changes it in place)."""
    path = tmp_path / "err"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = structlog.get_config()
    monkeypatch.setattr(records_module, "_writer", None)
    try:
        yield path, fd
    finally:
        structlog.configure(**saved)
        os.close(fd)


def test_auto_is_logfmt_under_the_journal_and_console_elsewhere(
    records: tuple[Path, int],
) -> None:
    _, fd = records
    stat = os.fstat(fd)
    journal = OutputWriter(fd, fd, environ={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    assert resolve_format("auto", journal) == "logfmt"
    assert resolve_format("auto", OutputWriter(fd, fd, environ={})) == "console"
    assert resolve_format("json", journal) == "json"
    assert [echo_wanted(echo, "console") for echo in ("auto", "true", "false")] == [
        False,
        True,
        False,
    ]
    assert [echo_wanted(echo, "logfmt") for echo in ("auto", "true", "false")] == [
        True,
        True,
        False,
    ]


def test_logfmt_and_json_keep_every_field_one_line_each(records: tuple[Path, int]) -> None:
    path, fd = records
    log = structlog.get_logger("test")
    stat = os.fstat(fd)
    writer = OutputWriter(fd, fd, environ={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    assert configure_logging("auto", writer=writer, environ={}) == "logfmt"
    fields = {k: v for k, v in vllm_event().items() if k not in ("timestamp", "level", "event")}
    log.warning("vllm_event", **fields, client="a\x1b[31m\rb\nc\td")
    assert configure_logging("json", writer=writer, environ={}) == "json"
    log.warning("vllm_event", **fields)
    logfmt, as_json = path.read_text().splitlines()
    assert logfmt.startswith("<4>timestamp=") and " level=warning event=vllm_event " in logfmt
    assert f'line="{LORA_LINE}"' in logfmt and "vllm_pid=29512" in logfmt
    # ESC and CR would make journald keep the message as a blob; newlines stay logfmt's;
    # a tab, which logfmt leaves raw, is escaped too.
    assert logfmt.endswith(" client=a\\x1b[31m\\rb\\nc\\td")
    assert as_json.startswith("<4>{")
    record = json.loads(as_json[3:])
    assert list(record)[:3] == ["timestamp", "level", "event"]
    assert record["line"] == LORA_LINE and record["details"] == {"fields": ["lora_name"]}


def event(rule: str, severity: Severity) -> Event:
    return Event(rule, severity, Action.LOG, "", "x", "APIServer", 1, None, ("x",))


def test_a_vllm_event_is_logged_at_its_rules_severity_and_info_in_a_requested_stop() -> None:
    events = VllmEventLog(EventCounters())
    rules = [
        ("engine_dead", Severity.CRITICAL),
        ("oom", Severity.ERROR),
        ("ignored_request_fields", Severity.WARNING),
        ("weights_loaded", Severity.INFO),
    ]
    with capture_logs() as logs:
        for rule, severity in rules:
            events.record(event(rule, severity), 0.0)
        with events.stopping():
            for rule, severity in rules:
                events.record(event(rule, severity), 100.0)
    levels = [(r["rule"], r["log_level"]) for r in logs if r["event"] == "vllm_event"]
    assert levels == [
        ("engine_dead", "critical"),
        ("oom", "error"),
        ("ignored_request_fields", "warning"),
        ("weights_loaded", "info"),
        ("engine_dead", "info"),
        ("oom", "info"),
        ("ignored_request_fields", "warning"),  # a client's mistake is trouble in any stop
        ("weights_loaded", "info"),
    ]


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("", True), ("1", False)])
def test_colour_only_on_a_terminal_and_never_with_no_color(
    records: tuple[Path, int], no_color: str | None, coloured: bool
) -> None:
    controller, terminal = pty.openpty()
    try:
        environ = {} if no_color is None else {"NO_COLOR": no_color}
        writer = OutputWriter(terminal, terminal, environ={})
        configure_logging("auto", writer=writer, environ=environ)
        fields = {k: v for k, v in vllm_event().items() if k not in ("level", "event")}
        structlog.get_logger("test").warning("vllm_event", **fields)
        shown = os.read(controller, 4096)
        _, file_fd = records
        configure_logging("console", writer=OutputWriter(file_fd, file_fd, environ={}))
        structlog.get_logger("test").warning("vllm_event", **fields)
    finally:
        os.close(controller)
        os.close(terminal)
    assert (b"\x1b[33mwarning" in shown) is coloured  # https://no-color.org: any non-empty value
    assert "\x1b" not in records[0].read_text()  # a file is never coloured


@pytest.mark.parametrize(
    ("yaml_value", "echo"),
    [("true", "true"), ("false", "false"), ("yes", "true"), ("auto", "auto"), (None, "auto")],
)
def test_log_echo_takes_auto_and_the_booleans_it_took_before(
    yaml_value: str | None, echo: str
) -> None:
    text = "server: {python: /v/bin/python}\nmodel: {path: /models/m}\n"
    if yaml_value is not None:
        text += f"supervisor: {{log: {{echo: {yaml_value}, format: json}}}}\n"
    config, problems = parse_config(text, source="c.yaml", environ={})
    assert config is not None, [p.format() for p in problems]
    assert config.supervisor.log.echo == echo
    assert config.supervisor.log.format == ("auto" if yaml_value is None else "json")


def test_log_format_and_echo_refuse_other_values_naming_the_choices() -> None:
    text = "server: {python: /v/bin/python}\nmodel: {path: /models/m}\n"
    text += "supervisor: {log: {echo: maybe, format: xml}}\n"
    config, problems = parse_config(text, source="c.yaml", environ={})
    assert config is None
    assert sorted(p.format() for p in problems) == [
        "c.yaml:3: error: supervisor.log.echo: 'maybe' is not accepted; use one of auto, true, "
        "false",
        "c.yaml:3: error: supervisor.log.format: 'xml' is not accepted; use one of auto, "
        "console, logfmt, json",
    ]
