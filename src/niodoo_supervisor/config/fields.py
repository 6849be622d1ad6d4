"""What one configuration key is, as read off its declaration in the config models.

Each key is declared once, as a field of a pydantic model (`server_sections.py`,
`supervisor_sections.py`); a vLLM option carries a `VllmFlag` in its `Annotated` metadata.
`keys.fields_of` reads every declaration into a `Field`: the flat view that rendering
(`launch/render.py`), preflight, the error messages and the documentation (`docs.py`) use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from niodoo_supervisor.config.versions import Version

__all__ = ["Field", "Kind", "RenderStyle", "VllmFlag"]


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
    WINDOWS = "list of windows"  # maintenance.windows: {days, start, end, tz}


class RenderStyle(enum.Enum):
    VALUE = "value"  # --flag VALUE
    SWITCH = "switch"  # --flag when true, nothing when false
    VALUES = "values"  # --flag V1 V2 ... (argparse nargs="+")


@dataclass(frozen=True)
class VllmFlag:
    """Declaration metadata of a key that is a vLLM option: `Annotated[int | None, VllmFlag(...)]`.

    `vllm_default` is documented only: an absent key is not rendered and vLLM applies its own
    default. `since`/`removed_in` name the vLLM versions that have the flag. With `allow_auto`,
    the string "auto" is accepted and resolved by preflight. A `secret` value is redacted.
    """

    flag: str
    render: RenderStyle = RenderStyle.VALUE
    vllm_default: object = None
    since: Version | None = None
    removed_in: Version | None = None
    allow_auto: bool = False
    secret: bool = False


@dataclass(frozen=True)
class Field:
    """One YAML key, derived from its declaration.

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

    def value_in(self, config: object) -> object:
        """This key's value in a loaded config (`server.port` -> `config.server.port`), for
        code driven by the table, such as rendering every vLLM option in turn."""
        value = config
        for part in self.key.split("."):
            value = getattr(value, part)
        return value

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
