"""The flat table of keys, read off the config models: one `Field` per declared key.

The models are the declaration; this table is how the rest reads them by dotted key:
`vllm_options.VLLM_OPTIONS` (rendering, preflight), the problem messages and did-you-mean
suggestions, and the generated documentation.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from niodoo_supervisor.config.fields import Field, Kind, RenderStyle, VllmFlag
from niodoo_supervisor.config.value_types import KnownValues

__all__ = ["KeyTable", "fields_of"]

_BASE_KINDS: Mapping[type, Kind] = {
    bool: Kind.BOOL,
    int: Kind.INT,
    float: Kind.FLOAT,
    str: Kind.STR,
}


@dataclass(frozen=True)
class KeyTable:
    """Every key of a model tree (`fields`, in declaration order) and every mapping that holds
    keys (`sections`: "server", "supervisor.health", ...)."""

    fields: tuple[Field, ...]
    by_key: Mapping[str, Field]
    sections: frozenset[str]

    @classmethod
    def of(cls, model: type[BaseModel]) -> KeyTable:
        fields = fields_of(model)
        sections = frozenset(
            ".".join(spec.key.split(".")[:depth])
            for spec in fields
            for depth in range(1, spec.key.count(".") + 1)
        )
        return cls(fields, MappingProxyType({spec.key: spec for spec in fields}), sections)

    def suggest(self, path: str) -> str:
        """The fix for an unknown key: a close sibling, the same name in another section, or
        the keys that are known there."""
        parent, _, leaf = path.rpartition(".")
        siblings = sorted(
            {
                key[len(parent) + 1 :].split(".")[0]
                for key in self.by_key
                if key.startswith(parent + ".")
            }
            if parent
            else {key.split(".")[0] for key in self.by_key}
        )
        close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        if close:
            return f"did you mean {(parent + '.') if parent else ''}{close[0]}?"
        elsewhere = [key for key in self.by_key if key.rsplit(".", 1)[-1] == leaf]
        if elsewhere:
            return f"did you mean {elsewhere[0]}?"
        if siblings:
            return f"known keys here: {', '.join(siblings)}"
        return "see docs/configuration.md"


def fields_of(model: type[BaseModel], prefix: str = "") -> tuple[Field, ...]:
    """One `Field` per leaf key of `model`, nested models walked as sections."""
    found: list[Field] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(fields_of(annotation, key + "."))
        else:
            found.append(_field(key, info))
    return tuple(found)


def _field(key: str, info: FieldInfo) -> Field:
    metadata = list(info.metadata)
    base_types: list[Any] = []
    for base, inner_metadata in _parts(info.annotation):
        base_types.append(base)
        metadata.extend(inner_metadata)
    flag = next((item for item in metadata if isinstance(item, VllmFlag)), None)
    allow_auto = flag is not None and flag.allow_auto
    literals = [arg for base in base_types if get_origin(base) is Literal for arg in get_args(base)]
    known = next((item for item in metadata if isinstance(item, KnownValues)), None)
    choices: tuple[object, ...] | None = None
    if literals:
        choices = tuple(arg for arg in literals if not (allow_auto and arg == "auto"))
    elif known is not None:
        choices = known.values
    default: object = None
    if info.default_factory is not None:
        default = info.default_factory()  # type: ignore[call-arg]
    elif info.default is not PydanticUndefined:
        default = info.default
    return Field(
        key,
        _kind(metadata, base_types, literals),
        info.description or "",
        default=default,
        flag=flag.flag if flag else None,
        render=flag.render if flag else RenderStyle.VALUE,
        vllm_default=flag.vllm_default if flag else None,
        choices=choices,
        minimum=_bound(metadata, annotated_types.Ge, "ge"),
        maximum=_bound(metadata, annotated_types.Le, "le"),
        exclusive_minimum=_bound(metadata, annotated_types.Gt, "gt"),
        since=flag.since if flag else None,
        removed_in=flag.removed_in if flag else None,
        secret=flag.secret if flag else False,
        required=info.is_required(),
        allow_auto=allow_auto,
    )


def _parts(annotation: Any) -> Iterator[tuple[Any, list[Any]]]:
    """(type, metadata) for each member of a union, `Annotated` metadata collected."""
    metadata: list[Any] = []
    while get_origin(annotation) is typing.Annotated:
        metadata.extend(annotation.__metadata__)
        annotation = annotation.__origin__
    if get_origin(annotation) in (typing.Union, types.UnionType):
        for member in get_args(annotation):
            for base, inner in _parts(member):
                yield base, metadata + inner
    elif annotation is not type(None):
        yield annotation, metadata


def _kind(metadata: list[Any], base_types: list[Any], literals: list[object]) -> Kind:
    marked = next((item for item in metadata if isinstance(item, Kind)), None)
    if marked is not None:
        return marked
    if literals:
        return Kind.INT if any(isinstance(arg, int) for arg in literals) else Kind.STR
    return _BASE_KINDS[base_types[0]]


def _bound(metadata: list[Any], kind: type, name: str) -> float | None:
    for item in metadata:
        if isinstance(item, kind):
            value = getattr(item, name)
            return float(value) if isinstance(value, float) else int(value)
    return None
