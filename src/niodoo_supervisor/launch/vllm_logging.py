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

vLLM also hands this file to uvicorn as its ``log_config`` (0.32:
``server_utils.get_uvicorn_log_config``; from ``--log-config-file``, whose default is the
same variable, in the older versions), and uvicorn then uses it *instead of* its own
``LOGGING_CONFIG``. So the config repeats uvicorn's default logging exactly (the start-up
lines, "Application startup complete." and the access log), with colours off so no ANSI
codes reach the log. uvicorn still applies ``--uvicorn-log-level`` and
``--disable-uvicorn-access-log`` after loading it (``Config.configure_logging``), and needs
the formatter names ``default`` and ``access`` (it sets their ``use_colors`` when asked).
"""

from __future__ import annotations

import copy
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


# uvicorn's own LOGGING_CONFIG (uvicorn/config.py, unchanged from 0.18 to 0.54), colours off.
_UVICORN_FORMATTERS = {
    "default": {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(message)s",
        "use_colors": False,
    },
    "access": {
        "()": "uvicorn.logging.AccessFormatter",
        "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
        "use_colors": False,
    },
}
_UVICORN_HANDLERS = {
    "default": {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    },
    "access": {
        "formatter": "access",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    },
}
_UVICORN_LOGGERS = {
    "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
    "uvicorn.error": {"level": "INFO"},
    "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
}


def logging_config_for(version: Version) -> dict[str, Any]:
    """A JSON-serialisable `logging.config.dictConfig` for vLLM `version`: vLLM's and
    uvicorn's default logging, plus the ignored-fields line at DEBUG."""
    prefix = _PREFIX if version >= _PREFIX_IN_FORMAT else ""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            **copy.deepcopy(_UVICORN_FORMATTERS),
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
            **copy.deepcopy(_UVICORN_HANDLERS),
        },
        "loggers": {
            **copy.deepcopy(_UVICORN_LOGGERS),
            "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
            # Propagates to the "vllm" handler; only this logger is let through at DEBUG.
            ignored_fields_logger_for(version): {"level": "DEBUG"},
        },
    }
