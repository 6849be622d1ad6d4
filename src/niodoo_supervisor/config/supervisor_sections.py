"""The `supervisor` section (how vLLM is watched, restarted, stopped and logged) and the
operator's log `rules`. These keys are not vLLM flags; the defaults here are the ones the
supervisor uses. Durations are seconds.

Every number has a maximum: durations become timers and systemd's microsecond counters (where
1e303 seconds overflows), counts become buffer sizes and loops.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from niodoo_supervisor.config.control_sections import ControlSection
from niodoo_supervisor.config.fields import Kind
from niodoo_supervisor.config.metrics_sections import MetricsSection
from niodoo_supervisor.config.value_types import Int, LocalPath, Number, Section
from niodoo_supervisor.logs.rule_types import Rule

__all__ = [
    "RULE_PROBLEMS",
    "HealthSection",
    "LogSection",
    "RestartSection",
    "Rules",
    "StopSection",
    "SupervisorSection",
]

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY


class HealthSection(Section):
    """supervisor.health: readiness and liveness probes."""

    interval: Annotated[
        Number,
        Field(gt=0.0, le=HOUR, description="Seconds between liveness checks once ready."),
    ] = 10.0
    startup_interval: Annotated[
        Number,
        Field(
            gt=0.0,
            le=HOUR,
            description="Seconds between readiness probes while vLLM loads. Once its log says "
            "the HTTP server is up, or /health first answers, probes come every 0.05 s (or "
            "this, if shorter) until ready, for at most 200 probes; after /health has answered "
            "once, `failure_threshold` probe time-outs in a row restart vLLM.",
        ),
    ] = 1.0
    timeout: Annotated[Number, Field(gt=0.0, le=HOUR, description="Timeout of one HTTP probe.")] = (
        5.0
    )
    failure_threshold: Annotated[
        Int,
        Field(
            ge=1,
            le=10_000,
            description="Consecutive failed liveness checks before vLLM is restarted.",
        ),
    ] = 3


class RestartSection(Section):
    """supervisor.restart: backoff after a crash and the crash-loop limit."""

    initial_delay: Annotated[
        Number, Field(ge=0.0, le=DAY, description="First backoff delay after a crash.")
    ] = 2.0
    factor: Annotated[
        Number,
        Field(
            ge=1.0,
            le=100.0,
            description="Each further backoff delay is the previous one times this.",
        ),
    ] = 2.0
    max_delay: Annotated[Number, Field(ge=0.0, le=DAY, description="Longest backoff delay.")] = (
        120.0
    )
    jitter: Annotated[
        Number,
        Field(
            ge=0.0,
            le=1.0,
            description="Random spread of each delay, as a fraction of it (0.1 = +/-10%).",
        ),
    ] = 0.1
    reset_after: Annotated[
        Number,
        Field(
            ge=0.0,
            le=WEEK,
            description="Once vLLM has stayed ready this long, the backoff starts again from "
            "initial_delay.",
        ),
    ] = 300.0
    max_starts: Annotated[
        Int,
        Field(
            ge=1,
            le=10_000,
            description="Crash-loop limit: this many starts within `window` seconds end in FATAL "
            "and the supervisor exits, leaving it to systemd's policy.",
        ),
    ] = 5
    window: Annotated[
        Number, Field(gt=0.0, le=WEEK, description="The crash-loop window in seconds.")
    ] = 900.0


class StopSection(Section):
    """supervisor.stop: how vLLM is stopped."""

    grace_period: Annotated[
        Number,
        Field(
            ge=0.0,
            le=DAY,
            description="Seconds vLLM's API server gets after its SIGTERM to drain and end its "
            "own engine and workers; then its whole process group gets SIGTERM, and SIGKILL "
            "2 s later. With drain.timeout above 0 the wait is at least "
            "drain.timeout + 10 s (vLLM's worker shutdown and exit), so it never cuts "
            "vLLM's drain.",
        ),
    ] = 30.0


def _auto_or_yes_no(value: Any) -> Any:
    # YAML's true/false (the key was a boolean before `auto`) become the words of the choice;
    # anything else is judged as a choice of words.
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class LogSection(Section):
    """supervisor.log: the vLLM log file and crash reports."""

    path: Annotated[
        LocalPath | None,
        Field(description="The vLLM log file (size-rotated). Absent: vllm.log in state_dir."),
    ] = None
    max_bytes: Annotated[
        Int,
        Field(ge=1024, le=2**40, description="Size at which the vLLM log file is rotated."),
    ] = 50 * 1024 * 1024
    backup_count: Annotated[
        Int, Field(ge=0, le=1_000, description="Rotated vLLM log files kept (vllm.log.1 ...).")
    ] = 5
    format: Annotated[
        Literal["auto", "console", "logfmt", "json"],
        Field(
            description="How the supervisor's own records are written to its stderr. "
            "`console`: a short line for a person (time, level, event, the few fields that "
            "matter; colour on a terminal unless NO_COLOR is set); `logfmt` or `json`: every "
            "field, for the journal and log shippers; `auto`: logfmt when stderr is the "
            "journal (systemd's JOURNAL_STREAM), else console. Under the journal each line "
            "carries its syslog priority (`journalctl -p warning` lists the trouble). Read "
            "once when the supervisor starts."
        ),
    ] = "auto"
    echo: Annotated[
        Literal["auto", "true", "false"],
        BeforeValidator(_auto_or_yes_no),
        Field(
            description="Copy every vLLM line to the supervisor's stdout (the journal under "
            "systemd, at priority info). `auto`: with the logfmt or json format, not with "
            "console (the vLLM log file has them all). Read once when the supervisor starts."
        ),
    ] = "auto"
    crash_report_lines: Annotated[
        Int,
        Field(ge=0, le=10_000, description="vLLM lines kept and logged with a crash report."),
    ] = 60


class SupervisorSection(Section):
    """supervisor: watching, restarting, stopping, logging."""

    state_dir: Annotated[
        LocalPath,
        Field(
            description="Folder for the state file (pids of the running vLLM), the generated "
            "logging config and, by default, the vLLM log."
        ),
    ] = "/var/lib/niodoo-supervisor"
    startup_timeout: Annotated[
        Number,
        Field(
            gt=0.0,
            le=WEEK,
            description="Longest time from launch to ready. Model loads take minutes on a GPU.",
        ),
    ] = 1200.0
    startup_stall_timeout: Annotated[
        Number,
        Field(
            gt=0.0,
            le=DAY,
            description="While starting, systemd's start timeout is extended by this much each "
            "time vLLM writes a line; a start that stays silent longer is treated as hung.",
        ),
    ] = 300.0
    health: HealthSection = Field(default_factory=HealthSection)
    restart: RestartSection = Field(default_factory=RestartSection)
    stop: StopSection = Field(default_factory=StopSection)
    log: LogSection = Field(default_factory=LogSection)
    control: ControlSection = Field(default_factory=ControlSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)


RULE_PROBLEMS = "niodoo_rule_problems"


def _compile_rules(value: Any) -> tuple[Rule, ...]:
    # Imported here: the rule engine is larger than the config and only needed when rules
    # are given.
    from niodoo_supervisor.logs.operator_rules import compile_user_rules

    rules, errors = compile_user_rules(value, "rules")
    if errors:
        # Each error names its own path (`rules[2].pattern: ...`): the loader splits them.
        raise PydanticCustomError(
            RULE_PROBLEMS, "{message}", {"message": errors[0], "problems": errors}
        )
    return tuple(rules)


_RULES_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "pattern"],
        "properties": {
            "name": {"type": "string"},
            "pattern": {"type": "string"},
            "severity": {"enum": ["info", "warning", "error", "critical"]},
            "action": {"enum": ["log", "check_now", "fatal"]},
            "hint": {"type": "string"},
        },
    },
}

Rules = Annotated[
    tuple[Rule, ...],
    Kind.RULES,
    PlainValidator(_compile_rules),
    WithJsonSchema(_RULES_SCHEMA),
    Field(
        description="Operator log rules added to the built-in table: a list of {name, pattern, "
        "severity, action, hint}. Patterns are RE2 syntax (linear time; no look-around or "
        "back-references). A fatal or check_now pattern matches only at the start of vLLM's "
        "message or right after a leading exception type (`ValueError: `); log and phase "
        "patterns match anywhere in a line vLLM wrote. No rule sees lines that quote a request "
        "(ignored field names, access and request-log lines)."
    ),
]
