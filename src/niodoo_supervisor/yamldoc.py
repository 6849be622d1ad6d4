"""Safe YAML loading that remembers where every key stands, so errors can name the line."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

__all__ = ["YamlDocument", "YamlSyntaxError", "parse_yaml"]


class YamlSyntaxError(Exception):
    """The text is not YAML; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None) -> None:
        self.line = line
        super().__init__(message)


@dataclass
class YamlDocument:
    data: object
    lines: dict[str, int] = field(default_factory=dict)  # "lora.adapters[0].path" -> line
    duplicate_keys: list[str] = field(default_factory=list)


def parse_yaml(text: str) -> YamlDocument:
    """Parse with the safe loader only (no Python object tags) and record each key's line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "invalid YAML"
        raise YamlSyntaxError(f"invalid YAML: {reason}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", None) from None
    except RecursionError:
        raise YamlSyntaxError("invalid YAML: nested too deeply", None) from None
    document = YamlDocument(data)
    if node is not None:
        try:
            _walk(node, "", document)
        except RecursionError:
            raise YamlSyntaxError("invalid YAML: nested too deeply", None) from None
    return document


def _walk(node: yaml.Node, path: str, document: YamlDocument) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                document.duplicate_keys.append(child)
            seen.add(key)
            document.lines.setdefault(child, key_node.start_mark.line + 1)
            _walk(value_node, child, document)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            document.lines.setdefault(child, item.start_mark.line + 1)
            _walk(item, child, document)
