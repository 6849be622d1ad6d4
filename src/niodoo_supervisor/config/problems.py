"""Problems found in a config: one line each, naming the YAML path and the fix."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "Severity", "errors_in"]


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


def errors_in(problems: Iterable[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.is_error]


class ConfigError(Exception):
    """A config that cannot be used; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(problem.format() for problem in problems))
