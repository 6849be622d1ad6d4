"""Problems found in a config: one line each, naming the YAML path and the fix."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Problem", "Severity", "line_in"]


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """`path` is the YAML path (`lora.adapters[1].path`); `line` its line in the file, if known."""

    severity: Severity
    path: str
    message: str
    fix: str = ""
    line: int | None = None
    source: str | None = None

    def format(self) -> str:
        where = self.source or "config"
        if self.line is not None:
            where = f"{where}:{self.line}"
        text = f"{where}: {self.severity.value}: {self.path}: {self.message}"
        if self.fix:
            text += f"; {self.fix}"
        # One line per problem, whatever the message quoted.
        return " ".join(text.split())

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def line_in(lines: Mapping[str, int], path: str) -> int | None:
    """The line of `path`, else of the nearest list item or list it is in: a key that is
    missing (`lora.adapters[1].path`) is found at its item, then at `lora.adapters`."""
    line = lines.get(path)
    while line is None and "[" in path:
        path = path.rsplit("[", 1)[0] if path.endswith("]") else path[: path.rindex("]") + 1]
        line = lines.get(path)
    return line
