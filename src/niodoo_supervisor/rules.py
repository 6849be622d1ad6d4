"""Known vLLM log lines turned into supervisor events: the rule table and its machinery.

The table (`BUILTIN_RULES`) is data. Every rule has literal `anchors`, one of which any
line it matches contains, so the scanner looks for anchors with `bytes.find` over whole
chunks and runs a rule's regex only on the rare lines that hold one. Operator rules come
from YAML (`compile_user_rules`); their anchors are derived from the pattern.

Actions, as the supervisor applies them:

- ``log``: an event (journal, counters, status) and nothing else.
- ``phase``: startup progress; feeds systemd ``STATUS=`` and extends the start timeout.
- ``check_now``: the engine died; probe health now and restart without waiting.
- ``fatal``: a start failure retrying cannot fix; applied only while starting, at other
  times it is an error event.

A rule fires at most once per log record, so a traceback naming an error on ten lines is
one event that carries the traceback's lines.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from niodoo_supervisor.logparse import ChunkScanner, HitRecord, LogRecord, ParsedLine, split_line

__all__ = [
    "BUILTIN_RULES",
    "PHASES",
    "Action",
    "Event",
    "EventCounters",
    "EventScanner",
    "Rule",
    "RuleSet",
    "Severity",
    "compile_user_rules",
    "required_literals",
]


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Action(str, Enum):
    LOG = "log"
    PHASE = "phase"
    CHECK_NOW = "check_now"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Rule:
    """One known line. `pattern` runs on the message (the line without its header)."""

    name: str
    pattern: str
    severity: Severity
    action: Action
    hint: str
    anchors: tuple[str, ...] = ()  # empty: derived from `pattern`
    phase: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A rule hit. `lines` are the raw lines of the whole record (a traceback: all)."""

    rule: str
    severity: Severity
    action: Action
    hint: str
    message: str
    process: str | None
    pid: int | None
    timestamp: str | None
    lines: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (enums as their values)."""
        plain = asdict(self)
        return {**plain, "severity": self.severity.value, "action": self.action.value,
                "lines": list(self.lines)}  # fmt: skip


S, A = Severity, Action
_LORA_NAME_HINT = (
    "vLLM has no `lora_name` request field: a client selects an adapter by sending its "
    'served name as `model` (for example "model": "a"); fix the client.'
)
_GUIDED_HINT = (
    "guided_* fields were removed from vLLM and are ignored, so output is NOT "
    "constrained: send `structured_outputs` (or `response_format`) instead."
)
_ENGINE_DEAD_HINT = (
    "vLLM's engine process died; /health answers 503 and vLLM exits soon (with code 0). "
    "The supervisor restarts it; the root cause is in the lines before."
)
_PATH_HINT = (
    "A model or adapter path does not exist or is not a model directory: check "
    "model/adapters paths in the config (no hub download happens when HF_HUB_OFFLINE=1)."
)

# Anchors are chosen to share first bytes: the scanner makes one pass over each chunk per
# distinct first byte (16 passes for these 42 anchors), so a new anchor should start with one
# of E L S A R W C I N T m n e v K ":" if it can.
# fmt: off
# Phases in the order a healthy start logs them (for STATUS= and tests).
PHASES = ("starting", "engine_init", "loading_weights", "weights_loaded", "kv_cache",
          "engine_ready", "adapter_loaded", "listening", "routes", "startup_complete")
# Groups of the patterns below that hold numbers (an adapter named "7" stays a string).
_NUMBERS = frozenset(("rank", "max_lora_rank", "max_cpu_loras", "max_loras", "errno",
                      "exit_code", "tokens", "max_model_len", "estimated_max_model_len",
                      "seconds", "gib", "free", "total"))

BUILTIN_RULES: tuple[Rule, ...] = (
    # --- requests ---------------------------------------------------------------------
    Rule("ignored_request_fields",
         r"The following fields were present in the request but ignored: (?P<fields>.*)",
         S.WARNING, A.LOG,
         "Clients send request fields this vLLM does not know; they are dropped silently.",
         ("The following fields were present",)),
    Rule("removed_guided_fields",
         r"Request contains the removed guided-decoding field\(s\) (?P<fields>\[.*?\])",
         S.WARNING, A.LOG, _GUIDED_HINT, ("Request contains the removed guided-decoding",)),
    # --- engine death -------------------------------------------------------------------
    Rule("engine_fatal_error", r"EngineCore encountered a fatal error", S.CRITICAL,
         A.CHECK_NOW, _ENGINE_DEAD_HINT, ("EngineCore encountered a fatal error",)),
    Rule("engine_dead", r"\bEngineDeadError\b", S.CRITICAL, A.CHECK_NOW, _ENGINE_DEAD_HINT,
         ("EngineDeadError",)),
    Rule("engine_core_died",  # 0.10.2-0.26 and 0.27+ wording
         r"Engine core proc (?P<engine>\S+) died unexpectedly|engine core exited unexpectedly",
         S.CRITICAL, A.CHECK_NOW, _ENGINE_DEAD_HINT,
         ("Engine core proc ", "engine core exited unexpectedly")),
    Rule("worker_died",
         r"(?:Worker proc (?P<worker>\S+)|RayWorkerProc rank=(?P<rank>\d+)) died "
         r"unexpectedly(?: \(exit code: (?P<exit_code>-?\d+)\))?",
         S.CRITICAL, A.CHECK_NOW,
         "A vLLM worker process died (killed, OOM-killed, or crashed in a kernel); the "
         "engine shuts down. Look for the OOM killer in the journal or dmesg.",
         ("Worker proc ", "RayWorkerProc rank=")),
    Rule("engine_start_failed",
         r"EngineCore failed to start|Engine core initialization failed"
         r"|WorkerProc (?:failed to start|initialization failed)",
         S.ERROR, A.CHECK_NOW,
         "The engine failed while starting; the cause is logged above (memory, rank, "
         "quantization, path). Retried with backoff unless a fatal cause was seen.",
         ("EngineCore failed to start", "Engine core initialization failed", "WorkerProc ")),
    Rule("cpu_attention_unsupported",
         r"Unsupported CPU attention configuration:? ?(?P<config>.*)", S.ERROR, A.LOG,
         "The CPU build cannot run this model's attention shape (head_dim 16 fails, 64 "
         "works); the engine dies at the first request.",
         ("CPU attention configuration",)),
    # --- start failures retrying cannot fix -----------------------------------------------
    Rule("cli_argument_error",
         r"^(?P<prog>[^:]+): error: (?P<reason>(?:unrecognized arguments|argument |the "
         r"following arguments are required|invalid choice).*)",
         S.CRITICAL, A.FATAL,
         "vLLM refused its command line (exit code 2): a flag is unknown to this vLLM "
         "version or has a bad value. Fix the config or install the vLLM it was written for.",
         (": error: ",)),
    Rule("lora_rank_too_big",
         r"LoRA rank (?P<rank>\d+) is greater than max_lora_rank (?P<max_lora_rank>\d+)",
         S.CRITICAL, A.FATAL,
         "An adapter's rank (`r` in adapter_config.json) exceeds --max-lora-rank: raise "
         "the server's max_lora_rank to at least that rank or use a smaller adapter.",
         ("LoRA rank ",)),
    Rule("lora_config_invalid",
         r"max_cpu_loras \((?P<max_cpu_loras>\d+)\) must be >= max_loras \((?P<max_loras>\d+)\)",
         S.CRITICAL, A.FATAL, "Set max_cpu_loras to at least max_loras (or leave it unset).",
         ("max_cpu_loras (",)),
    Rule("address_in_use", r"\[Errno (?P<errno>98)\] (?:.*: )?[Aa]ddress already in use",
         S.CRITICAL, A.FATAL,
         "The port is taken, often by a leftover vLLM of an earlier run: find it with "
         "`ss -ltnp` and stop it, or change the port.",
         ("Errno 98]",)),
    Rule("model_path_invalid",
         r"Invalid repository ID or local directory specified: '(?P<path>[^']*)'"
         r"|(?P<path2>\S+) is not a local folder and is not a valid model identifier"
         r"|(?P<path3>\S+) does not appear to have a file named (?P<file>[^\s.]+(?:\.\w+)?)"
         r"|Repo id must (?:be in the form|use alphanumeric)|Repository Not Found for url",
         S.CRITICAL, A.FATAL, _PATH_HINT,
         ("Invalid repository ID", "not a local folder", "not appear to have a file named",
          "Repo id must", "Repository Not Found")),
    Rule("file_not_found",
         r"^(?:\w+\.)*(?:FileNotFoundError|OSError|ValueError): \[Errno 2\] No such file or "
         r"directory: '(?P<path>[^']*)'",
         S.CRITICAL, A.FATAL, _PATH_HINT, ("No such file or directory",)),
    Rule("adapter_not_found",
         r"Loading lora (?P<adapter>\S+) failed: No adapter found for (?P<path>\S+)",
         S.ERROR, A.FATAL, _PATH_HINT, ("Loading lora ",)),
    Rule("quantization_mismatch",
         r"Quantization method specified in the model config \((?P<checkpoint>[^)]*)\) "
         r"does not match the quantization method specified in the `quantization` "
         r"argument \((?P<argument>[^)]*)\)",
         S.CRITICAL, A.FATAL,
         "The checkpoint's quantization differs from --quantization: remove the setting "
         "(vLLM reads it from the checkpoint) or set the checkpoint's method.",
         ("match the quantization method",)),
    # --- memory -------------------------------------------------------------------------
    Rule("no_kv_cache_memory", r"No available memory for the cache blocks", S.CRITICAL,
         A.FATAL,
         "The weights use all memory vLLM may take: raise gpu_memory_utilization, use a "
         "smaller or quantized model, or more GPUs (tensor parallel).",
         ("No available memory for the cache blocks",)),
    Rule("kv_cache_too_small",
         r"max seq len \((?P<max_model_len>\d+)\).*?(?:larger than the available KV cache "
         r"memory|larger than the maximum number of tokens that can be stored in KV cache)"
         r"(?:.*?estimated maximum model length is (?P<estimated_max_model_len>\d+))?",
         S.CRITICAL, A.FATAL,
         "max_model_len does not fit in the KV cache: lower max_model_len (to the "
         "estimate, if given) or raise gpu_memory_utilization.",
         ("max seq len (",)),
    Rule("gpu_memory_busy",
         r"Free memory on device (?P<device>\S+)? ?\((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\)"
         r".*?less than desired GPU memory utilization",
         S.ERROR, A.LOG,
         "Another process holds GPU memory (a leftover vLLM worker?): check nvidia-smi. "
         "Retried with backoff.",
         ("memory on device",)),
    Rule("cuda_out_of_memory", r"CUDA out of memory", S.ERROR, A.LOG,
         "The GPU ran out of memory: lower gpu_memory_utilization, max_num_seqs or "
         "max_model_len.",
         ("CUDA out of memory",)),
    # --- LoRA lifecycle -----------------------------------------------------------------
    Rule("lora_loaded", r"Loaded new LoRA adapter: name '(?P<adapter>[^']*)', "
         r"path '(?P<path>[^']*)'", S.INFO, A.PHASE, "", ("Loaded new LoRA adapter",),
         "adapter_loaded"),
    Rule("lora_removed", r"Removed LoRA adapter: name '(?P<adapter>[^']*)'", S.INFO, A.LOG,
         "", ("Removed LoRA adapter",)),
    Rule("lora_load_failed", r"Invocation of add_lora method failed|Call to add_lora method "
         r"failed", S.ERROR, A.LOG,
         "vLLM could not load a LoRA adapter; the reason follows in the same record.",
         ("Invocation of add_lora method failed", "Call to add_lora method failed")),
    # --- startup phases -----------------------------------------------------------------
    Rule("version", r"(?:^|\s)version (?P<version>\d+\.\d+[\w.+-]*)"
         r"|vLLM (?:API )?server version (?P<version2>\d+\.\d+[\w.+-]*)",
         S.INFO, A.PHASE, "", ("version ",), "starting"),
    Rule("engine_init", r"Initializing an? (?:V1 )?LLM engine \(v(?P<version>[^)]+)\)",
         S.INFO, A.PHASE, "", ("LLM engine (v",), "engine_init"),
    Rule("weights_loading", r"Starting to load model (?P<model>.+?)(?:\.\.\.)?$", S.INFO,
         A.PHASE, "", ("Starting to load model",), "loading_weights"),
    Rule("weights_loaded", r"Loading weights took (?P<seconds>[\d.]+) seconds", S.INFO,
         A.PHASE, "", ("Loading weights took",), "weights_loaded"),
    Rule("kv_cache_sized", r"(?P<device>\w+ )?KV cache size: (?P<tokens>[\d,]+) tokens",
         S.INFO, A.PHASE, "", ("KV cache size: ",), "kv_cache"),
    Rule("engine_ready", r"init engine \(profile, create kv cache, warmup model\) took "
         r"(?P<seconds>[\d.]+)", S.INFO, A.PHASE, "", ("engine (profile",),
         "engine_ready"),
    Rule("listening", r"Starting vLLM (?:API )?server(?: \d+)? on (?P<address>\S+)", S.INFO,
         A.PHASE, "", ("Starting vLLM server on", "Starting vLLM API server"), "listening"),
    Rule("routes", r"^Available routes are:", S.INFO, A.PHASE, "",
         ("Available routes are:",), "routes"),
    Rule("startup_complete", r"^Application startup complete\.", S.INFO, A.PHASE, "",
         ("Application startup complete",), "startup_complete"),
)
# fmt: on

_MIN_ANCHOR = 3
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def required_literals(pattern: str) -> tuple[str, ...] | None:
    """Literal strings one of which every match of `pattern` contains, or None.

    Walks the regex parse tree (the `re` module's own parser), preferring the set whose
    shortest member is longest. Case-insensitive parts yield nothing.
    """
    parser: Any = importlib.import_module(
        "re._parser" if sys.version_info >= (3, 11) else "sre_parse"
    )
    try:
        tree = parser.parse(pattern, 0)
    except (re.error, ValueError, TypeError, OverflowError, RecursionError):
        return None
    if tree.state.flags & re.IGNORECASE:
        return None
    found = _literals(tree)
    return tuple(sorted(found)) if found else None


def _score(candidate: frozenset[str]) -> tuple[int, int]:
    return min(map(len, candidate)), -len(candidate)


def _literals(seq: Any) -> frozenset[str] | None:
    best: frozenset[str] | None = None
    run: list[str] = []

    def consider(candidate: frozenset[str] | None) -> None:
        nonlocal best
        if not candidate or min(map(len, candidate)) < _MIN_ANCHOR:
            return
        if best is None or _score(candidate) > _score(best):
            best = candidate

    for op, av in seq:
        name = str(op)
        if name == "LITERAL":
            run.append(chr(av))
            continue
        consider(frozenset({"".join(run)}) if run else None)
        run = []
        if name == "SUBPATTERN" and not av[1] & re.IGNORECASE:
            consider(_literals(av[3]))
        elif name == "BRANCH":
            branches = [_literals(b) for b in av[1]]
            if all(branches):
                consider(frozenset().union(*(b for b in branches if b)))
        elif name in _REPEATS and av[0] >= 1:
            consider(_literals(av[2]))
        elif name == "ATOMIC_GROUP":
            consider(_literals(av))
    consider(frozenset({"".join(run)}) if run else None)
    return best


_RULE_KEYS = ("name", "pattern", "severity", "action", "hint", "phase", "anchors")
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")


def compile_user_rules(items: object, path: str = "rules") -> tuple[list[Rule], list[str]]:
    """Operator rules from YAML: a list of {name, pattern, severity, action, hint} mappings
    (optional: phase, anchors). Returns the rules and one-line errors naming the path."""
    if items is None:
        return [], []
    if not isinstance(items, list):
        return [], [f"{path}: must be a list of rules, got {type(items).__name__}"]
    rules: list[Rule] = []
    errors: list[str] = []
    seen = {r.name: "a built-in rule" for r in BUILTIN_RULES}
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        rule = _user_rule(item, where, errors)
        if rule is None:
            continue
        if rule.name in seen:
            errors.append(f"{where}.name: {rule.name!r} is already used by {seen[rule.name]}")
            continue
        seen[rule.name] = where
        rules.append(rule)
    return rules, errors


def _user_rule(item: object, where: str, errors: list[str]) -> Rule | None:
    if not isinstance(item, Mapping):
        errors.append(f"{where}: must be a mapping with name, pattern, severity, action, hint")
        return None
    n_errors = len(errors)
    for key in item:
        if key not in _RULE_KEYS:
            errors.append(f"{where}.{key}: unknown key; expected one of {', '.join(_RULE_KEYS)}")
    name, pattern, hint = item.get("name"), item.get("pattern"), item.get("hint", "")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(f"{where}.name: must be a lower-case identifier like 'my_rule', got {name!r}")
    severity = _enum(Severity, item.get("severity", "warning"), f"{where}.severity", errors)
    action = _enum(Action, item.get("action", "log"), f"{where}.action", errors)
    if not isinstance(hint, str):
        errors.append(f"{where}.hint: must be text")
    phase = item.get("phase")
    if phase is not None and not isinstance(phase, str):
        errors.append(f"{where}.phase: must be text")
    anchors: tuple[str, ...] | None = None
    if not isinstance(pattern, str) or not pattern:
        errors.append(f"{where}.pattern: must be a non-empty regular expression")
    else:
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.append(f"{where}.pattern: invalid regex: {exc}; fix the pattern")
        else:
            anchors = _user_anchors(item.get("anchors"), pattern, where, errors)
    if len(errors) > n_errors or anchors is None:
        return None
    assert isinstance(name, str) and isinstance(pattern, str) and isinstance(hint, str)
    assert severity is not None and action is not None
    if action is Action.PHASE and phase is None:
        phase = name
    return Rule(
        name, pattern, severity, action, hint, anchors, phase if isinstance(phase, str) else None
    )


def _enum(kind: type[Severity] | type[Action], value: object, where: str, errors: list[str]) -> Any:
    try:
        return kind(value)
    except ValueError:
        errors.append(f"{where}: must be one of {', '.join(m.value for m in kind)}, got {value!r}")
        return None


def _user_anchors(
    raw: object, pattern: str, where: str, errors: list[str]
) -> tuple[str, ...] | None:
    if raw is None:
        derived = required_literals(pattern)
        if derived is None:
            errors.append(
                f"{where}.pattern: has no fixed text of {_MIN_ANCHOR}+ characters that every "
                "match contains (needed to scan fast); add one, or list such texts in `anchors`"
            )
        return derived
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(a, str) and len(a) >= _MIN_ANCHOR for a in raw)
    ):
        errors.append(f"{where}.anchors: must be a list of texts of {_MIN_ANCHOR}+ characters")
        return None
    return tuple(raw)


def _fields(text: str) -> list[str]:
    # A Python set/list repr: {'lora_name', "it's"}; names sorted for stable output.
    return sorted(
        a or b for a, b in re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", text)
    )


def _value(name: str, text: str) -> Any:
    if name == "fields":
        return _fields(text)
    if name in _NUMBERS:
        with contextlib.suppress(ValueError):
            return float(text) if "." in text else int(text.replace(",", ""))
    return text.strip()


class RuleSet:
    """The built-in rules plus the operator's (`user_rules`), compiled with their anchors;
    turns records into events. `builtin=False` leaves the built-in table out (tests)."""

    def __init__(self, user_rules: Iterable[Rule] = (), *, builtin: bool = True) -> None:
        self.rules = (*(BUILTIN_RULES if builtin else ()), *user_rules)
        self._compiled: list[tuple[Rule, re.Pattern[str]]] = []
        by_anchor: dict[str, list[int]] = {}
        for k, rule in enumerate(self.rules):
            anchors = rule.anchors or required_literals(rule.pattern)
            if not anchors:
                raise ValueError(f"rule {rule.name!r}: no anchor text; give `anchors`")
            self._compiled.append((rule, re.compile(rule.pattern)))
            for anchor in anchors:
                by_anchor.setdefault(anchor, []).append(k)
        # Which rules a line may match: those with an anchor in it (checked in C, per line).
        self._by_anchor = tuple((a, tuple(ks)) for a, ks in by_anchor.items())
        self.anchors = tuple(sorted(a.encode() for a in by_anchor))
        self._memo: dict[str, tuple[tuple[int, dict[str, Any], str], ...]] = {}

    @classmethod
    def from_config(cls, items: object, path: str = "rules") -> tuple[RuleSet, list[str]]:
        """Built-in rules plus the operator's YAML list; errors as `compile_user_rules`."""
        user, errors = compile_user_rules(items, path)
        return cls(user), errors

    def scanner(self) -> EventScanner:
        return EventScanner(self)

    def events(
        self,
        record: LogRecord,
        hit_lines: Sequence[int] | None = None,
        parsed: Sequence[ParsedLine] | None = None,
    ) -> list[Event]:
        """Events of one record, at most one per rule. `hit_lines` limits the lines tried;
        `parsed` are those lines already parsed (the scanner has them)."""
        events: list[Event] = []
        fired: set[int] = set()
        lines = range(len(record.lines)) if hit_lines is None else hit_lines
        for n, i in enumerate(lines):
            line = split_line(record.lines[i]) if parsed is None else parsed[n]
            if _quotes_a_client(line):
                continue
            message = line.message
            for k, details, hint in self._matches(message):
                if k not in fired:
                    fired.add(k)
                    rule = self._compiled[k][0]
                    own = {key: list(v) if isinstance(v, list) else v for key, v in details.items()}
                    events.append(
                        Event(
                            rule.name, rule.severity, rule.action, hint, message.strip(),
                            record.process, record.pid, record.timestamp, _cap(record.lines), own,
                        )
                    )  # fmt: skip
        return events

    def _matches(self, message: str) -> tuple[tuple[int, dict[str, Any], str], ...]:
        # Memoised by message: a client sending lora_name makes the same line per request.
        found = self._memo.get(message)
        if found is None:
            out = []
            for k in sorted({k for anchor, ks in self._by_anchor if anchor in message for k in ks}):
                rule, regex = self._compiled[k]
                m = regex.search(message)
                if m is not None:
                    out.append((k, *_details(rule, m)))
            found = tuple(out)
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[message] = found
        return found


_ACCESS_LOG = re.compile(r'\S+:\d+ - "')


def _quotes_a_client(line: ParsedLine) -> bool:
    """Lines that quote what a client sent: uvicorn's access log (the decoded path) and
    vLLM's request log (the prompt). A client must not fake events through them."""
    if line.header is None and line.level is not None:
        return _ACCESS_LOG.match(line.message) is not None
    return line.message.startswith(("Received request ", "Added request "))


def _details(rule: Rule, m: re.Match[str]) -> tuple[dict[str, Any], str]:
    """The event details of a match, and the hint (which may depend on them)."""
    details: dict[str, Any] = {}
    for key, text in m.groupdict().items():
        if text is not None:
            # path2/version2: alternatives of one pattern cannot reuse a group name
            name = key.rstrip("0123456789")
            details[name] = _value(name, text)
    hint = rule.hint
    fields = details.get("fields", [])
    if rule.name == "ignored_request_fields":
        if "lora_name" in fields:
            hint = f"{hint} {_LORA_NAME_HINT}"
        if any(f.startswith("guided_") for f in fields):
            hint = f"{hint} {_GUIDED_HINT}"
    if rule.phase is not None:
        details["phase"] = rule.phase
    return details, hint


def _cap(lines: tuple[str, ...], keep: int = 100) -> tuple[str, ...]:
    if len(lines) <= 2 * keep:
        return lines
    cut = f"[niodoo-supervisor] {len(lines) - 2 * keep} lines left out"
    return (*lines[:keep], cut, *lines[-keep:])


class EventScanner:
    """Events from a byte stream, chunk by chunk (see `ChunkScanner`).

    An open record flushed early (`flush()`) fires its rules then; when it completes,
    only rules it had not fired yet fire, so each rule still fires once per record.
    """

    def __init__(self, ruleset: RuleSet) -> None:
        self._rules = ruleset
        self._scanner = ChunkScanner(ruleset.anchors)
        self._fired: dict[int, set[str]] = {}

    @property
    def pending(self) -> bool:
        return self._scanner.pending

    def feed(self, data: bytes) -> list[Event]:
        return self._events(self._scanner.feed(data))

    def flush(self, *, final: bool = False) -> list[Event]:
        return self._events(self._scanner.flush(final=final))

    def _events(self, found: list[HitRecord]) -> list[Event]:
        out: list[Event] = []
        for hit in found:
            fired = self._fired.pop(hit.serial, set())
            for event in self._rules.events(hit.record, hit.hit_lines, hit.hits):
                if event.rule not in fired:
                    fired.add(event.rule)
                    out.append(event)
            if not hit.complete:
                self._fired[hit.serial] = fired
        return out


class EventCounters:
    """Counts per rule and per ignored request field, and each rule's last occurrence."""

    def __init__(self, clock: Callable[[], float] = time.time, max_fields: int = 200) -> None:
        self._clock = clock
        self._max_fields = max_fields
        self.rules: dict[str, int] = {}
        self.fields: dict[str, int] = {}
        self.last: dict[str, tuple[float, str]] = {}

    def add(self, event: Event) -> None:
        self.rules[event.rule] = self.rules.get(event.rule, 0) + 1
        line = next(
            (ln for ln in event.lines if event.message in ln), event.lines[0] if event.lines else ""
        )
        self.last[event.rule] = (self._clock(), line)
        if event.rule == "ignored_request_fields":
            for name in event.details.get("fields", []):
                # Clients choose field names: bound the table, count the rest together.
                key = (
                    name
                    if name in self.fields or len(self.fields) < self._max_fields
                    else "(other)"
                )
                self.fields[key] = self.fields.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "rules": {
                name: {"count": n, "last_time": self.last[name][0], "last_line": self.last[name][1]}
                for name, n in sorted(self.rules.items())
            },
            "ignored_fields": dict(sorted(self.fields.items())),
        }
