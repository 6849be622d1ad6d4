"""What declarations are made of: the `Section` base model and the value types: strict numbers, text that must not be blank, paths
resolved against the config's folder, host names, lists and mappings of strings.

Each is an `Annotated` type whose validators raise `rejected(message, fix)`: the loader turns
that into one `Problem` line. YAML has already typed every scalar, so nothing is coerced: `port:
"8000"` is refused, not converted (a `${VAR}` in a number field is read back as a YAML scalar
before validation, see `values.expand_tree`).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    Strict,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from niodoo_supervisor.config.fields import Kind
from niodoo_supervisor.config.values import (
    INT_LIMIT,
    check_host,
    described,
    is_plain_scalar,
    number_hint,
    shown,
    type_name,
)

__all__ = [
    "ITEM_PROBLEMS",
    "OUT_OF_RANGE",
    "REJECTED",
    "Bool",
    "EnvMap",
    "HostName",
    "Int",
    "ItemProblem",
    "KnownValues",
    "LocalPath",
    "ModelPath",
    "Number",
    "Section",
    "Text",
    "TextList",
    "WholeNumberOrAuto",
    "item_problems",
    "rejected",
]

REJECTED = "niodoo_rejected"
OUT_OF_RANGE = "niodoo_out_of_range"  # the loader adds the key's range as the fix
ITEM_PROBLEMS = "niodoo_item_problems"
ItemProblem = tuple[str, str, str]  # (YAML path, message, fix)
_LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")
_SCALAR_ITEMS = {"type": ["string", "number"]}


def rejected(message: str, fix: str | None = None) -> PydanticCustomError:
    """The error a validator raises. Without a `fix`, the loader gives the key's documentation."""
    # The message is passed as context, not as the template: it may hold braces (`${NAME}`).
    return PydanticCustomError(REJECTED, "{message}", {"message": message, "fix": fix})


def item_problems(problems: Sequence[ItemProblem]) -> PydanticCustomError:
    """The error of a list validator that checks each item itself: the loader reports each
    problem at its own path (`maintenance.windows[1].tz`)."""
    return PydanticCustomError(
        ITEM_PROBLEMS, "{message}", {"message": problems[0][1], "problems": tuple(problems)}
    )


def _within_64_bits(value: Any) -> Any:
    # Every integer the supervisor or vLLM reads fits in 64 bits; longer ones are typos or
    # attacks (and Python refuses to print integers of more than 4300 digits).
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        message = f"{shown(value)} is out of range"
        raise PydanticCustomError(OUT_OF_RANGE, "{message}", {"message": message})
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise rejected("must not be empty")
    return value


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return base if isinstance(base, Path) else Path.cwd()


def resolve(text: str, base_dir: Path) -> str:
    """`text` as an absolute path; ValueError when its `~user` is no user of this machine."""
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # pathlib's word for a `~name` it cannot find
        raise ValueError(f"{text.split('/', 1)[0]!r} names no user of this machine") from None
    # normpath, not resolve(): `..` is folded, symlinks stay as the operator wrote them.
    return os.path.normpath(path if path.is_absolute() else base_dir / path)


def _resolved(value: str, info: ValidationInfo) -> str:
    try:
        return resolve(value, _base_dir(info))
    except ValueError as exc:
        raise rejected(str(exc), "write the path out in full, or ~ for your own home") from None


def _resolved_when_local(value: str, info: ValidationInfo) -> str:
    return _resolved(value, info) if value.startswith(_LOCAL_PATH_PREFIXES) else value


def _host(value: str) -> str:
    refused = check_host(value)
    if refused is not None:
        raise rejected(refused.message, refused.fix)
    return value


def _text_list(value: Any) -> tuple[str, ...]:
    fix = "write each item on its own `- ` line"
    if isinstance(value, str):
        raise rejected("must be a list of strings, not one string", fix)
    if not isinstance(value, (list, tuple)) or not all(is_plain_scalar(item) for item in value):
        raise rejected(f"must be a list of strings, not {type_name(value)}", fix)
    return tuple(str(item) for item in value)


def _env_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(is_plain_scalar(item) for item in value.values()):
        raise rejected("must be a mapping of names to strings", "write `NAME: value` lines")
    for name in value:
        # The names become environment variable names: execve cannot pass these.
        if not str(name) or "=" in str(name):
            raise rejected(
                f"the name {shown(str(name))} is empty or contains '='",
                "use letters, digits and '_' in variable names",
            )
    return {str(name): str(item) for name, item in value.items()}


def _whole_number_or_auto(value: Any) -> Any:
    # Literal[1, 8, ...] alone would take True for 1 and 16.0 for 16.
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
        return _within_64_bits(value)
    if isinstance(value, float) and math.isfinite(value):
        raise rejected(f"must be an integer, not {value!r}", "drop the fraction")
    raise rejected(
        f"must be an integer or auto, not {described(value)}", number_hint(value) or None
    )


Int = Annotated[int, Strict(), AfterValidator(_within_64_bits)]
# An integer is taken and becomes a float.
Number = Annotated[float, Strict(), BeforeValidator(_within_64_bits)]
Bool = StrictBool
Text = Annotated[
    str,
    Strict(),
    AfterValidator(_not_blank),
    WithJsonSchema({"type": "string", "minLength": 1}),
]
LocalPath = Annotated[Text, Kind.PATH, AfterValidator(_resolved)]
# A local directory is resolved like a path; a hub id (`Qwen/Qwen2.5-7B`) is left to vLLM.
ModelPath = Annotated[Text, AfterValidator(_resolved_when_local)]
HostName = Annotated[Text, AfterValidator(_host)]
TextList = Annotated[
    tuple[str, ...],
    Kind.STR_LIST,
    BeforeValidator(_text_list),
    WithJsonSchema({"type": "array", "items": _SCALAR_ITEMS}),
]
EnvMap = Annotated[
    dict[str, str],
    Kind.STR_MAP,
    BeforeValidator(_env_map),
    WithJsonSchema({"type": "object", "additionalProperties": _SCALAR_ITEMS}),
]
WholeNumberOrAuto = BeforeValidator(_whole_number_or_auto)


@dataclass(frozen=True)
class KnownValues:
    """Metadata for free text with well-known values: a near miss of one of them is refused
    (`awqq`: did you mean awq?), anything else is passed on for the consumer to judge."""

    values: tuple[str, ...]

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def check(self, value: str) -> str:
        close = difflib.get_close_matches(value, self.values, n=1, cutoff=0.75)
        if value in self.values or not close:
            return value
        raise rejected(f"{value!r} is not accepted", f"did you mean {close[0]}?")


class Section(BaseModel):
    """A YAML mapping: frozen, unknown keys refused, no NaN or infinity. An empty section
    (`engine:` with everything commented out) and a key left empty (`port:`) mean "absent"."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _absent_when_empty(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data
