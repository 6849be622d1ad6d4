"""Logging set up the way vLLM 0.32 and uvicorn set it up, and the fake's emit helpers.

Two configuration steps, in vLLM's order:

1. at start, ``configure_vllm_logging``: the record factory that adds
   ``vllm_process_name``, then vLLM's default dictConfig (logger ``vllm``, stdout,
   ``(APIServer pid=N) INFO 11-24 01:11:40 [file.py:123] msg``) *or*, when
   ``VLLM_LOGGING_CONFIG_PATH`` is set, that JSON file instead;
2. when HTTP serving starts, ``configure_uvicorn_logging``: uvicorn's default config
   (``INFO:     ...`` on stderr, access lines on stdout) *or*, when a custom file is set,
   the same custom file applied again, because vLLM passes it to uvicorn as its
   ``log_config``. So a custom config that leaves out the ``uvicorn`` loggers silences
   ``Application startup complete.`` and the access log, as with real vLLM.

Every fake line names the real module, file and line vLLM logs it from (a ``Site``), so
logger-name filters and ``[file.py:N]`` tags match the captured logs.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vllm
from vllm.logging_utils import NewLineFormatter

__all__ = [
    "ROOT",
    "Site",
    "configure_uvicorn_logging",
    "configure_vllm_logging",
    "emit",
    "logo_formatter",
    "raw",
    "set_process_name",
    "uvicorn_access",
    "uvicorn_info",
    "uvicorn_shutdown_lines",
]

ROOT = Path(vllm.__file__).resolve().parent
_FORMAT = "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"
_DATE_FORMAT = "%m-%d %H:%M:%S"
# (process name, pid) of the current process; rewritten in forked children.
_process_info: dict[str, tuple[str, int]] = {}

_UVICORN_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        },
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
        },
    },
    "handlers": {
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
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}
_UVICORN_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}


@dataclass(frozen=True)
class Site:
    """Where vLLM logs a line from: logger name, file inside the package, line number."""

    logger: str
    path: str
    lineno: int


class _RecordFactory:
    """Adds ``vllm_process_name`` like vLLM's ``_VllmLogRecordFactory``."""

    def __init__(self, factory: Callable[..., logging.LogRecord]) -> None:
        self._factory = factory

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._factory(*args, **kwargs)
        info = _process_info.get("current")
        if info is None or info[1] != os.getpid():
            record.vllm_process_name = record.processName
        else:
            record.vllm_process_name = info[0]
        return record


def set_process_name(name: str) -> None:
    """Name the log prefix of this process: APIServer, EngineCore or Worker."""
    _process_info["current"] = (name, os.getpid())


def _use_color(stream: str) -> bool:
    if os.environ.get("NO_COLOR", "0") != "0" or os.environ.get("VLLM_LOGGING_COLOR") == "0":
        return False
    if os.environ.get("VLLM_LOGGING_COLOR") == "1" or os.environ.get("FORCE_COLOR", "0") != "0":
        return True
    target = {"ext://sys.stdout": sys.stdout, "ext://sys.stderr": sys.stderr}.get(stream)
    return target is not None and target.isatty()


def _default_config(level: str, stream: str) -> dict[str, Any]:
    prefix = os.environ.get("VLLM_LOGGING_PREFIX", "")
    formatter = {"datefmt": _DATE_FORMAT, "format": prefix + _FORMAT, "log_level": level}
    return {
        "formatters": {
            "vllm": {"()": "vllm.logging_utils.NewLineFormatter", **formatter},
            "vllm_color": {"()": "vllm.logging_utils.ColoredFormatter", **formatter},
        },
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm_color" if _use_color(stream) else "vllm",
                "level": level,
                "stream": stream,
            },
        },
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
        "version": 1,
        "disable_existing_loggers": False,
    }


def configure_vllm_logging() -> dict[str, Any] | None:
    """Apply vLLM's logging setup; returns the custom config dict, if one was loaded.

    Raises ``RuntimeError``/``ValueError`` exactly where vLLM does (missing file,
    logging disabled while a file is given, JSON that is not an object).
    """
    configure = bool(int(os.environ.get("VLLM_CONFIGURE_LOGGING", "1")))
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    stream = os.environ.get("VLLM_LOGGING_STREAM", "ext://sys.stdout")
    config_path = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if not configure and config_path:
        raise RuntimeError(
            "Logging configuration is disabled, but a Python logging config file was "
            "given. pylogging_config_file requires configure_logging to be enabled."
        )
    config: dict[str, Any] = {}
    if configure:
        factory = logging.getLogRecordFactory()
        if not isinstance(factory, _RecordFactory):
            logging.setLogRecordFactory(_RecordFactory(factory))
        config = _default_config(level, stream)
    custom: dict[str, Any] | None = None
    if config_path:
        path = Path(config_path)
        if not path.exists():
            raise RuntimeError(
                "Could not load logging config. File does not exist: %s", config_path
            )
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(
                "Invalid logging config. Expected dict, got %s.", type(loaded).__name__
            )
        custom = config = loaded
    for formatter in config.get("formatters", {}).values():
        # vLLM keeps accepting the formatter's pre-0.6 module path.
        if formatter.get("class") == "vllm.logging.NewLineFormatter":
            formatter["class"] = "vllm.logging_utils.NewLineFormatter"
    if config:
        logging.config.dictConfig(config)
    return custom


def configure_uvicorn_logging(custom: dict[str, Any] | None, level: str, access_log: bool) -> None:
    """What ``uvicorn.Config`` does with the ``log_config`` vLLM hands it."""
    logging.addLevelName(5, "TRACE")
    logging.config.dictConfig(custom if custom is not None else _UVICORN_CONFIG)
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).setLevel(_UVICORN_LEVELS[level])
    if not access_log:
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False


def emit(
    site: Site, level: int, msg: str, *args: object, proc: tuple[str, int] | None = None
) -> None:
    """Log ``msg`` as if from ``site``; ``proc`` attributes it to another process."""
    logger = logging.getLogger(site.logger)
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(
        logger.name, level, str(ROOT / site.path), site.lineno, msg, args, None
    )
    if proc is not None:
        record.vllm_process_name, record.process = proc
    logger.handle(record)


def raw(text: str) -> None:
    """Unprefixed output on stderr: tracebacks, warnings, progress bars."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def uvicorn_info(msg: str, *args: object) -> None:
    logging.getLogger("uvicorn.error").info(msg, *args)


def uvicorn_access(client: str, method: str, path: str, version: str, status: int) -> None:
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', client, method, path, version, status
    )


def logo_formatter(site: Site) -> bool:
    """True when vLLM would print the ASCII-art banner rather than a one-line version.

    vLLM prints the logo only while its own ``vllm`` handler (a NewLineFormatter) is the
    single handler on the logger's chain, i.e. not under most custom configs.
    """
    if os.environ.get("VLLM_DISABLE_LOG_LOGO", "0") not in ("", "0"):
        return False
    logger: logging.Logger | None = logging.getLogger(site.logger)
    while logger is not None:
        handlers = logger.handlers
        if len(handlers) == 1 and handlers[0].name == "vllm":
            return isinstance(handlers[0].formatter, NewLineFormatter)
        logger = logger.parent
    return False


def uvicorn_shutdown_lines() -> None:
    """What uvicorn logs when it stops serving (02-enginecore-killed.log)."""
    uvicorn_info("Shutting down")
    uvicorn_info("Waiting for application shutdown.")
    uvicorn_info("Application shutdown complete.")
    uvicorn_info("Finished server process [%d]", os.getpid())
