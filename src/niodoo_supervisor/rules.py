"""Known vLLM log lines turned into supervisor events: the rule machinery.

`RuleSet` compiles the built-in table (`rule_table.BUILTIN_RULES`) and the operator's
rules (`userrules.compile_user_rules`; anchors derived by `required_literals`) with their
anchors; `EventScanner` finds their events in a byte stream and `EventCounters` counts
them. The shared types (`Rule`, `Severity`, `Action`) live in `ruletypes`; all these
names are re-exported here.

A rule fires at most once per log record, so a traceback naming an error on ten lines is
one event that carries the traceback's lines.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from niodoo_supervisor.logparse import ChunkScanner, HitRecord, LogRecord, ParsedLine, split_line
from niodoo_supervisor.rule_table import _GUIDED_HINT, BUILTIN_RULES, PHASES
from niodoo_supervisor.ruletypes import Action, Rule, Severity
from niodoo_supervisor.userrules import compile_user_rules, required_literals

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


_LORA_NAME_HINT = (
    "vLLM has no `lora_name` request field: a client selects an adapter by sending its "
    'served name as `model` (for example "model": "a"); fix the client.'
)
# Groups of the built-in patterns (`rule_table`) that hold numbers (an adapter named "7"
# stays a string).
# fmt: off
_NUMBERS = frozenset(("rank", "max_lora_rank", "max_cpu_loras", "max_loras", "errno",
                      "exit_code", "tokens", "max_model_len", "estimated_max_model_len",
                      "seconds", "gib", "free", "total"))
# fmt: on


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
