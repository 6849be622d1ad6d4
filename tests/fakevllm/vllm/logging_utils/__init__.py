"""Fake of ``vllm.logging_utils``: the formatters a logging dictConfig may name.

A supervisor renders a ``VLLM_LOGGING_CONFIG_PATH`` file that refers to
``vllm.logging_utils.NewLineFormatter`` by name, so the fake must provide it with the
same constructor and the same output, including the ``\\r\\n`` + prefix it puts on
every continuation line of a multi-line message (banner, logged tracebacks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

__all__ = ["ColoredFormatter", "NewLineFormatter"]

_Style = Literal["%", "{", "$"]


def _shrink_path(relpath: Path) -> str:
    # vLLM shows DEBUG-level file info as a shortened path inside the package.
    parts = list(relpath.parts)
    new_parts: list[str] = []
    if parts and parts[0] == "vllm":
        parts = parts[1:]
    if parts and parts[0] == "v1":
        new_parts += parts[:2]
        parts = parts[2:]
    elif parts:
        new_parts += parts[:1]
        parts = parts[1:]
    if len(parts) > 2:
        new_parts += ["...", *parts[-2:]]
    else:
        new_parts += parts
    return "/".join(new_parts)


class NewLineFormatter(logging.Formatter):
    """Adds the line prefix after every newline of a multi-line message."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: _Style = "%",
        *,
        log_level: str | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style)
        self.use_relpath = log_level == "DEBUG"
        # The directory holding the ``vllm`` package, as vLLM computes it.
        self.root_dir = Path(__file__).resolve().parent.parent.parent

    def format(self, record: logging.LogRecord) -> str:
        if self.use_relpath:
            try:
                relpath = Path(record.pathname).resolve().relative_to(self.root_dir)
            except ValueError:
                relpath = Path(record.filename)
            record.fileinfo = _shrink_path(relpath)
        else:
            record.fileinfo = record.filename
        msg = super().format(record)
        if record.message != "":
            parts = msg.split(record.message)
            msg = msg.replace("\n", "\r\n" + parts[0])
        return msg


class ColoredFormatter(NewLineFormatter):
    """vLLM's colour variant, used only when the log stream is a TTY."""

    COLORS = {  # noqa: RUF012 - mirrors vLLM's class attribute
        "DEBUG": "\033[37m",
        "INFO": "\033[32m",
        "WARNING": "\033[33m",
        "ERROR": "\033[31m",
        "CRITICAL": "\033[35m",
    }
    GREY = "\033[90m"
    PROCESS_PREFIX_COLOR = "\033[0;36m"
    PROCESS_PREFIX_RESET = "\033[0;0m"
    RESET = "\033[0m"

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: _Style = "%",
        *,
        log_level: str | None = None,
    ) -> None:
        if fmt:
            prefix = "(%(vllm_process_name)s pid=%(process)d)"
            fmt = fmt.replace(
                prefix, f"{self.PROCESS_PREFIX_COLOR}{prefix}{self.PROCESS_PREFIX_RESET}"
            )
            fmt = fmt.replace("%(asctime)s", f"{self.GREY}%(asctime)s{self.RESET}")
            fmt = fmt.replace(
                "[%(fileinfo)s:%(lineno)d]", f"{self.GREY}[%(fileinfo)s:%(lineno)d]{self.RESET}"
            )
        super().__init__(fmt, datefmt, style, log_level=log_level)

    def format(self, record: logging.LogRecord) -> str:
        orig_levelname = record.levelname
        color = self.COLORS.get(record.levelname)
        if color is not None:
            record.levelname = f"{color}{record.levelname}{self.RESET}"
        try:
            return super().format(record)
        finally:
            record.levelname = orig_levelname
