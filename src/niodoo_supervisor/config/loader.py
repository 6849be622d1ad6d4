"""Load a YAML config into a validated, frozen `Config`, reporting every problem at once.

Validation is driven by the field tables (`vllm_args.VLLM_OPTIONS`,
`settings.SUPERVISOR_SETTINGS`); checks that need the filesystem, the network or the installed
vLLM belong to `launch/preflight.py`. The only I/O here is reading the YAML file itself.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from niodoo_supervisor.config.envexpand import ExpansionError
from niodoo_supervisor.config.fields import Field, Kind
from niodoo_supervisor.config.problems import Problem, Severity
from niodoo_supervisor.config.relations import check_relations
from niodoo_supervisor.config.supervisor_settings import SUPERVISOR_SETTINGS
from niodoo_supervisor.config.values import (
    Rejection,
    check_host,
    check_kind,
    contains_nul,
    copy_default,
    expand_tree,
    type_name,
)
from niodoo_supervisor.config.vllm_options import VLLM_OPTIONS
from niodoo_supervisor.config.yamldoc import YamlSyntaxError, parse_yaml
from niodoo_supervisor.files.inputs import InputFileError, read_text_file

__all__ = [
    "ALL_FIELDS",
    "Adapter",
    "Config",
    "load_config",
    "parse_config",
]

ALL_FIELDS: tuple[Field, ...] = VLLM_OPTIONS + SUPERVISOR_SETTINGS
FIELDS_BY_KEY: Mapping[str, Field] = MappingProxyType({f.key: f for f in ALL_FIELDS})
# Every mapping that may hold keys: "server", "supervisor", "supervisor.health", ...
SECTIONS: frozenset[str] = frozenset(
    ".".join(f.key.split(".")[:depth])
    for f in ALL_FIELDS
    for depth in range(1, f.key.count(".") + 1)
)
_ADAPTER_KEYS = ("name", "path", "base_model_name")
# A real config is a few KB, a list of a thousand adapters about 100 KB. Parsing costs about
# a second per MB on a slow machine, so the limit also bounds the time a bad file can take.
MAX_CONFIG_BYTES = 256 * 1024
_LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    base_model_name: str | None = None


@dataclass(frozen=True)
class Config:
    """A validated config. `values` holds every field key (defaults filled in, paths resolved);
    absent vLLM options are None and are not rendered."""

    values: Mapping[str, Any]
    source: str = "config"
    lines: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key not in FIELDS_BY_KEY:
            raise KeyError(key)
        return self.values.get(key)

    @property
    def adapters(self) -> tuple[Adapter, ...]:
        return tuple(self.values.get("lora.adapters") or ())

    @property
    def served_name(self) -> str:
        """The name `/v1/models` lists for the base model and adapters name as `parent`."""
        return str(self["model.served_name"] or self["model.path"])

    @property
    def host(self) -> str:
        return str(self["server.host"])

    @property
    def port(self) -> int:
        return int(self["server.port"])

    @property
    def probe_host(self) -> str:
        """Where the supervisor reaches vLLM: a wildcard listen address is probed on loopback."""
        host = self.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "::1"
        return host

    @property
    def state_dir(self) -> Path:
        return Path(self["supervisor.state_dir"])

    @property
    def log_path(self) -> Path:
        explicit = self["supervisor.log.path"]
        return Path(explicit) if explicit else self.state_dir / "vllm.log"

    def line_of(self, path: str) -> int | None:
        return self.lines.get(path)


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> tuple[Config | None, list[Problem]]:
    """Read and validate `path`. Returns the config (None when any error) and all problems."""
    source = str(path)
    try:
        text = read_text_file(path, MAX_CONFIG_BYTES)
    except InputFileError as exc:
        return None, [
            Problem(
                Severity.ERROR,
                "(file)",
                f"cannot read the config: {exc.reason}",
                exc.fix or "give the path of a readable UTF-8 YAML file with -c",
                source=source,
            )
        ]
    base_dir = Path(path).resolve().parent
    return parse_config(text, source=source, base_dir=base_dir, environ=environ)


def parse_config(
    text: str,
    *,
    source: str = "config",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Config | None, list[Problem]]:
    """Validate YAML text. Pure apart from reading `environ` (default: os.environ)."""
    validator = _Validator(
        source, base_dir or Path.cwd(), os.environ if environ is None else environ
    )
    return validator.run(text)


class _Validator:
    def __init__(self, source: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.environ = environ
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.values: dict[str, Any] = {}
        self.present: set[str] = set()

    def problem(self, path: str, message: str, fix: str = "", *, warning: bool = False) -> None:
        line = self.lines.get(path)
        if line is None and "[" in path:
            line = self.lines.get(path.split("[", 1)[0])
        severity = Severity.WARNING if warning else Severity.ERROR
        self.problems.append(Problem(severity, path, message, fix, line, self.source))

    def run(self, text: str) -> tuple[Config | None, list[Problem]]:
        try:
            document = parse_yaml(text)
        except YamlSyntaxError as exc:
            self.problems.append(
                Problem(
                    Severity.ERROR, exc.path or "(yaml)", str(exc), exc.fix, exc.line, self.source
                )
            )
            return None, self.problems
        self.lines = document.lines
        for duplicate in document.duplicate_keys:
            self.problem(duplicate, "key given twice", "keep one of them")
        if document.data is None:
            self.problem("(top)", "the config is empty", "start from config/demo-cpu.yaml")
            return None, self.problems
        if not isinstance(document.data, dict):
            self.problem(
                "(top)", "the config must be a mapping of sections", "see docs/configuration.md"
            )
            return None, self.problems
        self.walk_mapping(document.data, "")
        for spec in ALL_FIELDS:
            if spec.key not in self.present:
                if spec.required:
                    self.problem(spec.key, "required key is missing", f"add {spec.key}: {spec.doc}")
                self.values.setdefault(spec.key, copy_default(spec.default))
        check_relations(self.values, self.present, self.problem)
        if any(problem.is_error for problem in self.problems):
            return None, self.problems
        config = Config(
            MappingProxyType(dict(self.values)), self.source, MappingProxyType(self.lines)
        )
        return config, self.problems

    # --- structure -------------------------------------------------------------------------

    def walk_mapping(self, data: dict[Any, Any], prefix: str) -> None:
        for raw_key, value in data.items():
            key = str(raw_key)
            path = f"{prefix}.{key}" if prefix else key
            if path in FIELDS_BY_KEY:
                self.present.add(path)
                checked = self.check_value(FIELDS_BY_KEY[path], value, path)
                if checked is not _INVALID:
                    self.values[path] = checked
            elif path in SECTIONS:
                if value is None:
                    continue  # an empty section, e.g. `engine:` with everything commented out
                if not isinstance(value, dict):
                    self.problem(
                        path,
                        f"must be a mapping, not {type_name(value)}",
                        "indent its keys under it",
                    )
                    continue
                self.walk_mapping(value, path)
            else:
                self.problem(path, "unknown key", _suggest_key(path))

    # --- values ----------------------------------------------------------------------------

    def check_value(self, spec: Field, value: Any, path: str) -> Any:
        value = self.expand_strings(value, path, spec.kind)
        if value is _INVALID:
            return _INVALID
        if contains_nul(value):
            self.problem(path, "contains a NUL character", "remove it (\\0 in a quoted string)")
            return _INVALID
        if value is None:
            if spec.required:
                self.problem(path, "must not be empty", f"set it: {spec.doc}")
                return _INVALID
            return copy_default(spec.default)
        if spec.kind is Kind.ADAPTERS:
            return self.check_adapters(value, path)
        if spec.kind is Kind.RULES:
            return self.check_rules(value, path)
        checked = check_kind(spec, value)
        if isinstance(checked, Rejection):
            self.problem(path, checked.message, checked.fix)
            return _INVALID
        if spec.key == "server.host":
            refused = check_host(checked)
            if refused is not None:
                self.problem(path, refused.message, refused.fix)
                return _INVALID
        if spec.kind is Kind.PATH:
            return str(self.resolve_path(checked))
        if spec.key == "model.path" and checked.startswith(_LOCAL_PATH_PREFIXES):
            return str(self.resolve_path(checked))
        return checked

    def expand_strings(self, value: Any, path: str, kind: Kind) -> Any:
        try:
            return expand_tree(value, self.environ, typed=kind in (Kind.INT, Kind.FLOAT, Kind.BOOL))
        except ExpansionError as exc:
            self.problem(path, str(exc))
            return _INVALID

    def resolve_path(self, text: str) -> Path:
        # normpath, not resolve(): `..` is folded, symlinks stay as the operator wrote them.
        path = Path(text).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.base_dir / path))

    def check_adapters(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            self.problem(
                path,
                f"must be a list of adapters, not {type_name(value)}",
                "write `- name: a` / `  path: ...` items",
            )
            return _INVALID
        adapters: list[Adapter] = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if not isinstance(item, dict):
                self.problem(
                    item_path,
                    "must be a mapping with name and path",
                    "write `- name: a` and `  path: /adapters/a`",
                )
                continue
            for key in item:
                if str(key) not in _ADAPTER_KEYS:
                    close = difflib.get_close_matches(str(key), _ADAPTER_KEYS, n=1)
                    hint = (
                        f"did you mean {close[0]}?"
                        if close
                        else f"adapter keys are {', '.join(_ADAPTER_KEYS)}"
                    )
                    self.problem(f"{item_path}.{key}", "unknown key", hint)
            adapter = self.check_adapter(item, item_path)
            if adapter is not None:
                adapters.append(adapter)
        return tuple(adapters)

    def check_adapter(self, item: dict[Any, Any], path: str) -> Adapter | None:
        name, adapter_path, base = item.get("name"), item.get("path"), item.get("base_model_name")
        ok = True
        if not isinstance(name, str) or not name.strip():
            self.problem(
                f"{path}.name", "an adapter needs a name (a string)", "clients send it as `model`"
            )
            ok = False
        elif any(char.isspace() for char in name) or "=" in name:
            self.problem(
                f"{path}.name",
                f"{name!r} contains whitespace or '='",
                "use letters, digits, '-', '_' or '.'",
            )
            ok = False
        if not isinstance(adapter_path, str) or not adapter_path.strip():
            self.problem(
                f"{path}.path", "an adapter needs a path (a string)", "give the adapter's directory"
            )
            ok = False
        if base is not None and not isinstance(base, str):
            self.problem(
                f"{path}.base_model_name",
                f"must be a string, not {type_name(base)}",
                "name the base model",
            )
            ok = False
        if not ok:
            return None
        assert isinstance(name, str) and isinstance(adapter_path, str)
        return Adapter(name, str(self.resolve_path(adapter_path)), base)

    def check_rules(self, value: Any, path: str) -> Any:
        # Imported here: the rule engine is larger than the config and only needed when rules
        # are given.
        from niodoo_supervisor.logs.operator_rules import compile_user_rules

        rules, errors = compile_user_rules(value, path)
        for message in errors:
            item_path, _, text = message.partition(": ")
            self.problem(item_path or path, text or message)
        return tuple(rules)


class _Invalid:
    pass


_INVALID: Any = _Invalid()


def _suggest_key(path: str) -> str:
    parent, _, leaf = path.rpartition(".")
    siblings = sorted(
        {
            key[len(parent) + 1 :].split(".")[0]
            for key in FIELDS_BY_KEY
            if key.startswith(parent + ".")
        }
        if parent
        else {key.split(".")[0] for key in FIELDS_BY_KEY}
    )
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"did you mean {(parent + '.') if parent else ''}{close[0]}?"
    elsewhere = [key for key in FIELDS_BY_KEY if key.rsplit(".", 1)[-1] == leaf]
    if elsewhere:
        return f"did you mean {elsewhere[0]}?"
    if siblings:
        return f"known keys here: {', '.join(siblings)}"
    return "see docs/configuration.md"
