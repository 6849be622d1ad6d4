"""Load a YAML config into a validated, frozen `Config`, reporting every problem at once.

`Config` is the root of the config models: `config.supervisor.health.interval` is typed.
Loading is: YAML with each key's line (`yamldoc`), `${VAR}` expansion, pydantic validation
(every error at once, turned into one-line problems by `validation_problems`), then the checks
between keys (`relations`). Checks that need the filesystem, the network or the installed vLLM
belong to `launch/preflight.py`. The only I/O here is reading the YAML file itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError
from pydantic_core import ErrorDetails

from niodoo_supervisor.config.drain_sections import DEFAULT_ANNOUNCE_WITH_LISTENER, DrainSection
from niodoo_supervisor.config.engine_sections import Adapter, EngineSection, LoraSection
from niodoo_supervisor.config.envexpand import ExpansionError
from niodoo_supervisor.config.fields import Kind
from niodoo_supervisor.config.gpu_sections import GpuSection
from niodoo_supervisor.config.keys import KeyTable
from niodoo_supervisor.config.maintenance_sections import MaintenanceSection
from niodoo_supervisor.config.problems import Problem, Severity, line_in
from niodoo_supervisor.config.relations import check_relations
from niodoo_supervisor.config.serving_sections import ModelSection, ServerSection
from niodoo_supervisor.config.supervisor_sections import Rules, SupervisorSection
from niodoo_supervisor.config.topology_sections import TopologySection
from niodoo_supervisor.config.validation_problems import report_errors
from niodoo_supervisor.config.value_types import Section
from niodoo_supervisor.config.values import contains_nul, expand_tree
from niodoo_supervisor.config.yamldoc import YamlSyntaxError, parse_yaml
from niodoo_supervisor.files.inputs import InputFileError, read_text_file

__all__ = [
    "ALL_FIELDS",
    "KEYS",
    "MAX_CONFIG_BYTES",
    "Config",
    "ConfigCheck",
    "check_config",
    "load_config",
    "parse_config",
]

# A real config is a few KB, a list of a thousand adapters about 100 KB. Parsing costs about
# a second per MB on a slow machine, so the limit also bounds the time a bad file can take.
MAX_CONFIG_BYTES = 256 * 1024
# `port: ${PORT}` is read back as a YAML scalar so that it type-checks as a number.
_TYPED_KINDS = (Kind.INT, Kind.FLOAT, Kind.BOOL)


class Config(Section):
    """A validated config: the YAML's sections, defaults filled in, paths resolved against the
    config file's folder. Absent vLLM options are None and are not rendered."""

    model: ModelSection
    server: ServerSection
    engine: EngineSection = Field(default_factory=EngineSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    maintenance: MaintenanceSection = Field(default_factory=MaintenanceSection)
    drain: DrainSection = Field(default_factory=DrainSection)
    topology: TopologySection = Field(default_factory=TopologySection)
    gpu: GpuSection = Field(default_factory=GpuSection)
    rules: Rules = ()
    _source: str = PrivateAttr(default="config")
    _lines: Mapping[str, int] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The file the config was read from, as given (`config` for text)."""
        return self._source

    @property
    def lines(self) -> Mapping[str, int]:
        """The line of each YAML path written in the file (`lora.adapters[1].path` -> 23)."""
        return self._lines

    @property
    def adapters(self) -> tuple[Adapter, ...]:
        return self.lora.adapters

    @property
    def served_name(self) -> str:
        """The name `/v1/models` lists for the base model and adapters name as `parent`."""
        return self.model.served_name or self.model.path

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

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
    def drain_timeout(self) -> int | None:
        """The `--shutdown-timeout` vLLM runs with: drain.timeout, or its deprecated alias."""
        return (
            self.drain.timeout if self.drain.timeout is not None else self.server.shutdown_timeout
        )

    @property
    def drain_announce(self) -> float:
        """drain.announce, or its default: the wait is for load balancers polling a readiness
        endpoint, drain.readiness_listen's or supervisor.control.listen's GET /ready."""
        if self.drain.announce is not None:
            return self.drain.announce
        polled = self.drain.readiness_listen or self.supervisor.control.listen
        return DEFAULT_ANNOUNCE_WITH_LISTENER if polled else 0.0

    @property
    def state_dir(self) -> Path:
        return Path(self.supervisor.state_dir)

    @property
    def log_path(self) -> Path:
        explicit = self.supervisor.log.path
        return Path(explicit) if explicit else self.state_dir / "vllm.log"

    @property
    def control_socket(self) -> Path:
        explicit = self.supervisor.control.socket
        return Path(explicit) if explicit else self.state_dir / "control.sock"

    def line_of(self, path: str) -> int | None:
        """The line of a YAML path, or of the list it is in (see `problems.line_in`)."""
        return line_in(self._lines, path)


KEYS = KeyTable.of(Config)
ALL_FIELDS = KEYS.fields
# What a required key that is wrong is replaced by in `ConfigCheck.partial`: never read, since
# the key is named in `unchecked` and every check that reads it is skipped.
_STAND_INS = {"model.path": "(wrong)", "server.python": "/(wrong)"}


@dataclass(frozen=True)
class ConfigCheck:
    """`check`'s view of a config: the config (None when any error), every problem, and for
    the checks that need the machine, `partial`: the keys that are valid on their own, the wrong
    ones (named in `unchecked`) at their defaults or stand-ins. None when nothing could be read
    as a config at all (unreadable file, bad YAML)."""

    config: Config | None
    problems: list[Problem]
    partial: Config | None
    unchecked: frozenset[str]


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> tuple[Config | None, list[Problem]]:
    """Read and validate `path`. Returns the config (None when any error) and all problems."""
    source = str(path)
    try:
        text = read_text_file(path, MAX_CONFIG_BYTES)
    except InputFileError as exc:
        return None, [_unreadable(exc, source)]
    base_dir = Path(path).resolve().parent
    return parse_config(text, source=source, base_dir=base_dir, environ=environ)


def check_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> ConfigCheck:
    """`load_config`, keeping what the checks of the machine can still look at after errors."""
    source = str(path)
    try:
        text = read_text_file(path, MAX_CONFIG_BYTES)
    except InputFileError as exc:
        return ConfigCheck(None, [_unreadable(exc, source)], None, frozenset())
    loading = _Loading(
        source, Path(path).resolve().parent, os.environ if environ is None else environ
    )
    config, problems = loading.run(text)
    partial = config or loading.partial
    return ConfigCheck(config, problems, partial, frozenset(loading.unchecked))


def _unreadable(exc: InputFileError, source: str) -> Problem:
    return Problem(
        Severity.ERROR,
        "(file)",
        f"cannot read the config: {exc.reason}",
        exc.fix or "give the path of a readable UTF-8 YAML file with -c",
        source=source,
    )


def parse_config(
    text: str,
    *,
    source: str = "config",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Config | None, list[Problem]]:
    """Validate YAML text. Pure apart from reading `environ` (default: os.environ)."""
    loading = _Loading(source, base_dir or Path.cwd(), os.environ if environ is None else environ)
    return loading.run(text)


class _Loading:
    """One load: the problems found so far, with their lines."""

    def __init__(self, source: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.environ = environ
        self.lines: Mapping[str, int] = {}
        self.problems: list[Problem] = []
        self.left_out: set[str] = set()  # keys reported before validation
        # After errors: the config of the keys valid on their own, and the keys left out of it.
        self.partial: Config | None = None
        self.unchecked: set[str] = set()

    def problem(self, path: str, message: str, fix: str = "", *, warning: bool = False) -> None:
        severity = Severity.WARNING if warning else Severity.ERROR
        line = line_in(self.lines, path)
        self.problems.append(Problem(severity, path, message, fix, line, self.source))

    def validation_problem(self, path: str, message: str, fix: str) -> None:
        # A key left out after its own problem is not also "missing".
        if not any(path == key or path.startswith(key + ".") for key in self.left_out):
            self.problem(path, message, fix)

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
        self.lines = MappingProxyType(document.lines)
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
        data = self.expand(document.data, "")
        try:
            config = Config.model_validate(data, context={"base_dir": self.base_dir})
        except ValidationError as exc:
            errors = exc.errors()
            report_errors(errors, KEYS, _written_empty(data), self.validation_problem)
            self.check_relations_of_the_rest(data, self.left_out | _wrong_keys(errors))
            return None, self.problems
        config._source = self.source
        config._lines = self.lines
        check_relations(config, self.problem, self.left_out)
        if any(problem.is_error for problem in self.problems):
            # Each key is valid on its own (only a relation between some is wrong, or a key
            # left out): the files, vLLM and the port are as worth checking as before.
            self.partial, self.unchecked = config, set(self.left_out)
            return None, self.problems
        return config, self.problems

    def check_relations_of_the_rest(self, data: dict[Any, Any], wrong: set[str]) -> None:
        """The checks between keys still run on the valid keys, so that every problem is
        reported at once. A wrong required key is replaced by a stand-in that nothing reads."""
        kept = _without(data, wrong)
        stood_in = set()
        for key, stand_in in _STAND_INS.items():
            section_name, name = key.split(".")
            section = kept.setdefault(section_name, {})
            if isinstance(section, dict) and name not in section:
                section[name] = stand_in
                stood_in.add(key)
        try:
            rest = Config.model_validate(kept, context={"base_dir": self.base_dir})
        except ValidationError:
            return
        rest._source = self.source
        rest._lines = self.lines
        check_relations(rest, self.problem, wrong | stood_in)
        self.partial = rest
        self.unchecked = wrong | stood_in

    def leave_out(self, path: str, message: str, fix: str = "") -> None:
        self.left_out.add(path)
        self.problem(path, message, fix)

    def expand(self, data: dict[Any, Any], prefix: str) -> dict[Any, Any]:
        """`${VAR}` expanded in every key's value; a value that cannot be expanded, or that
        holds a NUL (execve and every path function refuse it), is reported and left out."""
        expanded: dict[Any, Any] = {}
        for key, written in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            spec = KEYS.by_key.get(path)
            if spec is None:
                nested = path in KEYS.sections and isinstance(written, dict)
                expanded[key] = self.expand(written, path) if nested else written
                continue
            try:
                value = expand_tree(written, self.environ, typed=spec.kind in _TYPED_KINDS)
            except ExpansionError as exc:
                self.leave_out(path, str(exc))
                continue
            if contains_nul(value):
                self.leave_out(
                    path, "contains a NUL character", "remove it (\\0 in a quoted string)"
                )
                continue
            expanded[key] = value
        return expanded


def _wrong_keys(errors: list[ErrorDetails]) -> set[str]:
    """The declared key (or section, or unknown key) each error is in: ("lora", "adapters", 2,
    "name") -> "lora.adapters"."""
    wrong: set[str] = set()
    for error in errors:
        path = ""
        for part in error["loc"]:
            if path in KEYS.by_key or not isinstance(part, str):
                break
            path = f"{path}.{part}" if path else part
        wrong.add(path)
    return wrong


def _without(data: dict[Any, Any], wrong: set[str], prefix: str = "") -> dict[Any, Any]:
    """`data` without the dotted keys in `wrong`."""
    kept: dict[Any, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path in wrong:
            continue
        nested = path in KEYS.sections and isinstance(value, dict)
        kept[key] = _without(value, wrong, path) if nested else value
    return kept


def _written_empty(data: dict[Any, Any]) -> Callable[[str], bool]:
    """Whether a dotted key is written in `data` with nothing after it (`python:`)."""

    def check(path: str) -> bool:
        node: Any = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        return isinstance(node, dict) and leaf in node and node[leaf] is None

    return check
