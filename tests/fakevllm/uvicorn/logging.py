"""uvicorn's two log formatters: ``INFO:     message`` and the access-log line."""

from __future__ import annotations

import http
import logging
import sys
from copy import copy
from typing import Literal

__all__ = ["AccessFormatter", "ColourizedFormatter", "DefaultFormatter"]

TRACE_LOG_LEVEL = 5

_LEVEL_COLOURS = {
    TRACE_LOG_LEVEL: "\033[34m",
    logging.DEBUG: "\033[36m",
    logging.INFO: "\033[32m",
    logging.WARNING: "\033[33m",
    logging.ERROR: "\033[31m",
    logging.CRITICAL: "\033[91m",
}


class ColourizedFormatter(logging.Formatter):
    """Adds ``%(levelprefix)s``: the level name, a colon, padding to 9 columns."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        use_colors: bool | None = None,
    ) -> None:
        if use_colors in (True, False):
            self.use_colors = bool(use_colors)
        else:
            self.use_colors = sys.stdout.isatty()
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)

    def formatMessage(self, record: logging.LogRecord) -> str:
        recordcopy = copy(record)
        levelname = recordcopy.levelname
        separator = " " * (8 - len(levelname))
        if self.use_colors:
            colour = _LEVEL_COLOURS.get(recordcopy.levelno, "")
            levelname = f"{colour}{levelname}\033[0m"
        recordcopy.__dict__["levelprefix"] = levelname + ":" + separator
        return super().formatMessage(recordcopy)


class DefaultFormatter(ColourizedFormatter):
    """uvicorn's formatter for ``uvicorn.error`` (server lifecycle lines)."""


class AccessFormatter(ColourizedFormatter):
    """uvicorn's access-log formatter; record args are (client, method, path, version, status)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        recordcopy = copy(record)
        args = recordcopy.args
        if isinstance(args, tuple) and len(args) == 5:
            client_addr, method, full_path, http_version, status_code = args
            try:
                phrase = http.HTTPStatus(int(str(status_code))).phrase
            except ValueError:
                phrase = ""
            recordcopy.__dict__.update(
                {
                    "client_addr": client_addr,
                    "request_line": f"{method} {full_path} HTTP/{http_version}",
                    "status_code": f"{status_code} {phrase}",
                }
            )
        return super().formatMessage(recordcopy)
