"""The declaration of one configuration key, shared by vLLM options and supervisor settings.

A `Field` says what a YAML key may hold and, for vLLM options, which flag it becomes and which
vLLM versions have that flag. Validation (`loader.py`), rendering (`launch/render.py`), the JSON Schema
and the documentation (`docs.py`) are all derived from tuples of these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from niodoo_supervisor.config.versions import Version

__all__ = ["Field", "Kind", "RenderStyle"]


class Kind(enum.Enum):
    STR = "string"
    PATH = "path"  # a string; relative values are resolved against the config file's folder
    INT = "integer"
    FLOAT = "number"
    BOOL = "boolean"
    STR_LIST = "list of strings"
    STR_MAP = "mapping of strings"
    ADAPTERS = "list of adapters"  # lora.adapters: {name, path, base_model_name}
    RULES = "list of log rules"  # rules: {name, pattern, severity, action, hint}


class RenderStyle(enum.Enum):
    VALUE = "value"  # --flag VALUE
    SWITCH = "switch"  # --flag when true, nothing when false
    VALUES = "values"  # --flag V1 V2 ... (argparse nargs="+")


@dataclass(frozen=True)
class Field:
    """One YAML key.

    `default` is the value the supervisor uses when the key is absent; for a vLLM option it is
    `None` (the flag is not rendered and vLLM applies its own default, `vllm_default`, which is
    documented only). `choices` are exact; `minimum`/`maximum` are inclusive and
    `exclusive_minimum` excludes its bound.
    """

    key: str
    kind: Kind
    doc: str
    default: object = None
    flag: str | None = None
    render: RenderStyle = RenderStyle.VALUE
    vllm_default: object = None
    choices: tuple[object, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    since: Version | None = None
    removed_in: Version | None = None
    secret: bool = False
    required: bool = False
    allow_auto: bool = False  # the string "auto" is accepted and resolved by preflight

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def available_in(self, version: Version) -> bool:
        """Whether the installed vLLM `version` accepts this field's flag."""
        if self.since is not None and version < self.since:
            return False
        return not (self.removed_in is not None and version >= self.removed_in)

    def versions_text(self) -> str:
        """Human description of the versions that have the flag, for errors and docs."""
        if self.since and self.removed_in:
            return f"vLLM {self.since} to before {self.removed_in}"
        if self.since:
            return f"vLLM {self.since} and later"
        if self.removed_in:
            return f"vLLM before {self.removed_in} (removed in {self.removed_in})"
        return "all supported vLLM versions"
