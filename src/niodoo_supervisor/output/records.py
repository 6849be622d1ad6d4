"""The supervisor's records: structlog events rendered for a person or for the journal, and
handed to the one writer with their level.

`supervisor.log.format` chooses: `console` (a compact line, `console`), `logfmt` or `json`
(every field), or `auto`: logfmt when stderr is the journal, else console. The daemon logs
before its config is read (a refused config), so logging starts as `auto` and the config's
format is switched in once it is known: the renderer is one object that changes its mode,
because structlog's cached loggers keep the processors they were built with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

from niodoo_supervisor.output.console import escaped, render_console
from niodoo_supervisor.output.writer import OutputWriter

__all__ = [
    "LOG_FORMATS",
    "RecordRenderer",
    "WriterLogger",
    "configure_logging",
    "echo_target",
    "echo_wanted",
    "resolve_format",
    "standard_writer",
]

LOG_FORMATS = ("auto", "console", "logfmt", "json")
Rendering = Literal["console", "logfmt", "json"]

_FIRST = ("timestamp", "level", "event")  # the keys a reader looks for, first

_writer: OutputWriter | None = None


def standard_writer() -> OutputWriter:
    """The writer of this process's fds 1 and 2 (made on first use)."""
    global _writer  # noqa: PLW0603 - one writer per process is the point
    if _writer is None:
        _writer = OutputWriter()
    return _writer


def resolve_format(requested: str, writer: OutputWriter) -> Rendering:
    """`auto` -> logfmt under the journal, console elsewhere."""
    if requested in ("console", "logfmt", "json"):
        return requested  # type: ignore[return-value]
    return "logfmt" if writer.err.journal else "console"


def echo_wanted(echo: str, rendering: Rendering) -> bool:
    """`supervisor.log.echo` (auto, true, false): `auto` echoes vLLM's lines where the journal
    keeps them verbatim (logfmt, json); on a console they stay in the vLLM log file."""
    if echo in ("true", "false"):
        return echo == "true"
    return rendering != "console"


def echo_target(echo: str, requested: str) -> OutputWriter | None:
    """The process's writer when vLLM's lines are to be echoed, else None."""
    writer = standard_writer()
    return writer if echo_wanted(echo, resolve_format(requested, writer)) else None


class RecordRenderer:
    """The processor chain's last step: an event dict -> one line of text."""

    def __init__(self) -> None:
        self.rendering: Rendering = "console"
        self.colour = False
        self._logfmt = structlog.processors.LogfmtRenderer(
            key_order=list(_FIRST), bool_as_flag=False
        )
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        if self.rendering == "console":
            return render_console(event_dict, colour=self.colour)
        if self.rendering == "json":
            first = {key: event_dict.pop(key) for key in _FIRST if key in event_dict}
            return str(self._json(logger, method_name, {**first, **event_dict}))
        # logfmt escapes newlines and quotes only; other control characters (tab, ESC, CR)
        # from a client's text are escaped first (journald keeps a message with ESC or CR
        # as a binary blob).
        return str(self._logfmt(logger, method_name, _controls_escaped(event_dict)))


class WriterLogger:
    """structlog's wrapped logger: each rendered line goes to the process's writer (looked up
    at each call: a cached logger outlives a change of writer) with its level."""

    def debug(self, message: str) -> None:
        standard_writer().record(message, "debug")

    def info(self, message: str) -> None:
        standard_writer().record(message, "info")

    msg = info

    def warning(self, message: str) -> None:
        standard_writer().record(message, "warning")

    warn = warning

    def error(self, message: str) -> None:
        standard_writer().record(message, "error")

    exception = error

    def critical(self, message: str) -> None:
        standard_writer().record(message, "critical")

    fatal = critical


_RENDERER = RecordRenderer()


def configure_logging(
    requested: str = "auto",
    *,
    writer: OutputWriter | None = None,
    environ: Mapping[str, str] | None = None,
) -> Rendering:
    """Route structlog's events through `writer` (the process's fds by default) in the
    rendering `requested` resolves to, which is returned. Called again with the config's
    format once the config is read."""
    global _writer  # noqa: PLW0603 - see standard_writer
    if writer is not None:
        _writer = writer
    out = standard_writer()
    env = os.environ if environ is None else environ
    _RENDERER.rendering = resolve_format(requested, out)
    _RENDERER.colour = out.err.tty and not env.get("NO_COLOR")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            structlog.processors.format_exc_info,
            _RENDERER,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *args: WriterLogger(),
        cache_logger_on_first_use=True,
    )
    return _RENDERER.rendering


def _controls_escaped(event_dict: EventDict) -> dict[str, Any]:
    # Newlines are logfmt's to escape (a crash report's lines read back as lines).
    return {
        key: escaped(value, keep_lines=True)
        if isinstance(value, str) and not value.isprintable()
        else value
        for key, value in event_dict.items()
    }
