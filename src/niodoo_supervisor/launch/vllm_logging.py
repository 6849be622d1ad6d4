"""The logging configuration the supervisor gives vLLM (via ``VLLM_LOGGING_CONFIG_PATH``).

vLLM replaces its whole default logging setup with this dictConfig, so it repeats vLLM's
own format (the lines look exactly as without it) and adds one thing: the logger that
reports request fields vLLM ignored (a client's ``lora_name`` above all) at DEBUG. Since
0.18 that line is logged at DEBUG, invisible by default. Everything else stays at INFO;
the handler is at DEBUG so that one logger's DEBUG line gets through.

Read from the published wheels (``vllm/logger.py``, ``.../protocol.py``):

======== ================================================ ===========================
vLLM     format                                           ignored-fields logger
======== ================================================ ===========================
0.10.0   ``LEVEL date [file:line] msg``                   openai.protocol (WARNING)
0.10.2+  same; a stream wrapper adds ``(Name pid=N)``     openai.protocol (WARNING)
0.15     same                                             openai.engine.protocol
0.18     same                                             openai.engine.protocol DEBUG
0.29     same                                             serve.engine.protocol DEBUG
0.31+    ``(%(vllm_process_name)s pid=N)`` in the format  serve.engine.protocol DEBUG
======== ================================================ ===========================

Before 0.31 the prefix must not be in the format (the wrapper adds it; it would appear
twice), and ``vllm_process_name`` does not exist (every line would fail to format).
``%(filename)s`` is used throughout: it equals vLLM's ``%(fileinfo)s`` at INFO and exists
in 0.10.0, which has no ``fileinfo``. The formatter is vLLM's ``NewLineFormatter`` (it
repeats the header on continuation lines, which the log parser relies on) and the handler
is named ``vllm``, which 0.32 checks before printing its banner.
"""

from __future__ import annotations

from typing import Any

from niodoo_supervisor.config.versions import Version

__all__ = ["ignored_fields_logger_for", "logging_config_for"]

_DATE_FORMAT = "%m-%d %H:%M:%S"
_BODY = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
_PREFIX = "(%(vllm_process_name)s pid=%(process)d) "

# (first version, logger). The gaps of the facts table were checked in the wheels:
# 0.15 and 0.27-0.28 still have openai.engine.protocol, 0.29 already serve.engine.protocol.
_IGNORED_FIELDS_LOGGERS = (
    (Version(0, 0), "vllm.entrypoints.openai.protocol"),
    (Version(0, 15), "vllm.entrypoints.openai.engine.protocol"),
    (Version(0, 29), "vllm.entrypoints.serve.engine.protocol"),
)
_PREFIX_IN_FORMAT = Version(0, 31)


def ignored_fields_logger_for(version: Version) -> str:
    """The logger that emits "The following fields were present in the request but
    ignored" in vLLM `version` (newer than known: the newest layout)."""
    name = _IGNORED_FIELDS_LOGGERS[0][1]
    for since, logger in _IGNORED_FIELDS_LOGGERS:
        if version >= since:
            name = logger
    return name


def logging_config_for(version: Version) -> dict[str, Any]:
    """A JSON-serialisable `logging.config.dictConfig` for vLLM `version`."""
    prefix = _PREFIX if version >= _PREFIX_IN_FORMAT else ""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "vllm": {
                # The "class" form: 0.10's NewLineFormatter takes (fmt, datefmt, style) only.
                "class": "vllm.logging_utils.NewLineFormatter",
                "format": prefix + _BODY,
                "datefmt": _DATE_FORMAT,
            },
        },
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": "DEBUG",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
            # Propagates to the "vllm" handler; only this logger is let through at DEBUG.
            ignored_fields_logger_for(version): {"level": "DEBUG"},
        },
    }
