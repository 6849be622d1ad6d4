"""Safe YAML loading that remembers where every key stands, so errors can name the line.

Hostile documents are refused before they cost anything: aliases may make a 1 KB file stand
for billions of values (each level of `[*a, *a, ...]` multiplies), so the composed node graph
is measured with every alias expanded, and refused past `MAX_VALUES` values or `MAX_DEPTH`
levels, before anything walks or builds it. libyaml's parser (`CSafeLoader`) is used when
PyYAML was built with it: about 20 times faster, with the same marks for line numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_VALUES",
    "PythonLoader",
    "YamlDocument",
    "YamlSyntaxError",
    "parse_yaml",
]

# A real config has a few hundred values and six levels; a list of a thousand adapters has
# about 4,000 values.
MAX_VALUES = 100_000
MAX_DEPTH = 64
_SHOWN = 40  # characters of a bad value quoted in a message


class YamlSyntaxError(Exception):
    """The text is not usable YAML; `line` is 1-based when known, `path` the key when known."""

    def __init__(
        self, message: str, line: int | None, *, path: str | None = None, fix: str = ""
    ) -> None:
        self.line = line
        self.path = path
        self.fix = fix or "fix the YAML syntax"
        super().__init__(message)


@dataclass
class YamlDocument:
    data: object
    lines: dict[str, int] = field(default_factory=dict)  # "lora.adapters[0].path" -> line
    duplicate_keys: list[str] = field(default_factory=list)


class _ValueError(Exception):
    """A scalar the resolver typed (a date, an integer, !!float) that cannot be built."""

    def __init__(self, node: yaml.Node, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(reason)


class NamedValueErrors:
    """Mixed into a safe loader: a value error says which node failed."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (yaml.YAMLError, _ValueError, RecursionError):
            raise
        except Exception as exc:
            # PyYAML's constructors fail on bad scalars with whatever Python raises: ValueError
            # (2001-13-45, 5000 digits), AttributeError (`!!timestamp never`), ...
            reason = str(exc) if isinstance(exc, (ValueError, OverflowError)) else "malformed"
            raise _ValueError(node, reason) from None


class PythonLoader(NamedValueErrors, yaml.SafeLoader):
    """PyYAML's pure-Python safe loader (no Python object tags)."""


# libyaml's parser when PyYAML was built with it (the wheels are), else PyYAML's own.
_FASTEST_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(NamedValueErrors, _FASTEST_SAFE_LOADER):  # type: ignore[misc]
    """The fastest safe loader, with named value errors."""


def parse_yaml(text: str) -> YamlDocument:
    """Parse with the safe loader only and record each key's line."""
    loader = _Loader(text)
    node_paths: dict[int, str] = {}
    try:
        node = loader.get_single_node()
        document = YamlDocument(None)
        if node is not None:
            _measure(node)
            _walk(node, "", document, node_paths)
            document.data = loader.construct_document(node)
        return document
    except _ValueError as exc:
        raise _value_error(exc, node_paths) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "invalid YAML"
        raise YamlSyntaxError(f"invalid YAML: {reason}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", None) from None
    except RecursionError:
        raise YamlSyntaxError("invalid YAML: nested too deeply", None) from None
    finally:
        loader.dispose()


def _measure(root: yaml.Node) -> None:
    """Refuse a graph whose expansion is too large or too deep, or that contains itself.
    Each collection is counted once (memoized), so this costs one pass over the text."""
    counted: dict[int, int] = {}  # id(collection node) -> values once expanded
    open_nodes: set[int] = set()

    def values_in(node: yaml.Node, level: int) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1
        key = id(node)
        known = counted.get(key)
        if known is not None:
            return known
        line = node.start_mark.line + 1
        if key in open_nodes:
            raise YamlSyntaxError(
                "an alias (*name) refers to a node that contains it", line, fix="remove the alias"
            )
        if level > MAX_DEPTH:
            raise YamlSyntaxError(f"the document is nested more than {MAX_DEPTH} levels deep", line)
        open_nodes.add(key)
        children = (
            [part for pair in node.value for part in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
        )
        total = 1 + sum(values_in(child, level + 1) for child in children)
        open_nodes.discard(key)
        if total > MAX_VALUES:
            aliased = "once its aliases (*name) are expanded " if total > _distinct(root) else ""
            raise YamlSyntaxError(
                f"the document stands for more than {MAX_VALUES:,} values {aliased}"
                "(a config has a few hundred)",
                line,
                fix="aliases that repeat aliases multiply: write the values out"
                if aliased
                else "name the right file",
            )
        counted[key] = total
        return total

    values_in(root, 1)


def _distinct(root: yaml.Node) -> int:
    """Nodes in the graph, each counted once however many aliases name it."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return len(seen)


def _walk(node: yaml.Node, path: str, document: YamlDocument, node_paths: dict[int, str]) -> None:
    node_paths.setdefault(id(node), path)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                document.duplicate_keys.append(child)
            seen.add(key)
            document.lines.setdefault(child, key_node.start_mark.line + 1)
            node_paths.setdefault(id(key_node), child)
            _walk(value_node, child, document, node_paths)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            document.lines.setdefault(child, item.start_mark.line + 1)
            _walk(item, child, document, node_paths)


def _value_error(exc: _ValueError, node_paths: dict[int, str]) -> YamlSyntaxError:
    node = exc.node
    tag = str(node.tag).rsplit(":", 1)[-1]
    text = str(node.value) if isinstance(node, yaml.ScalarNode) else tag
    shown = text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"
    # Python's own advice ("use sys.set_int_max_str_digits()") is not the operator's fix.
    reason = exc.reason.split("; use sys.", 1)[0]
    return YamlSyntaxError(
        f"{shown!r} cannot be read as a YAML {tag}: {reason}",
        node.start_mark.line + 1,
        path=node_paths.get(id(node)),
        fix="quote it if it is text, or write a valid value",
    )
