"""Known vLLM log lines turned into supervisor events: the rule machinery.

`RuleSet` compiles the built-in table (`builtin_rules.BUILTIN_RULES`) and the operator's
rules (`operator_rules.compile_user_rules`; anchors derived by `required_literals`) with
their anchors; `EventScanner` finds their events in a byte stream (`counters.EventCounters`
counts them). The shared types (`Rule`, `Severity`, `Action`, `Event`) live in
`rule_types`.

Hostile input (a client chooses the names of the request fields vLLM logs as ignored):

- Time: patterns run on RE2 (`operator_rules.compile_linear`), linear in the text whatever
  the pattern; Python's `re` backtracks (``\\S+ is not a local folder`` took 5 s on one
  16 KB line), and an operator's pattern cannot be audited. Lines are cut to
  `scan.MAX_LINE` bytes before matching; a cut line is reported as a `line_cut` event.
- Trust: only the ignored-fields rule sees client text (`trust`); a fatal event after
  vLLM started serving requests is reported, never acted on (`EventScanner`).
- Size: an event's message and lines, and the field names it lists, are cut to bounded
  lengths; the memo of matches holds only short messages.

A rule fires at most once per log record, so a traceback naming an error on ten lines is
one event that carries the traceback's lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from niodoo_supervisor.logs.builtin_rules import (
    _GUIDED_HINT,
    BUILTIN_RULES,
    IGNORED_FIELDS_RULE,
    LINE_CUT_RULE,
    LORA_GUARD_RULES,
    SERVING_PHASES,
    UNKNOWN_MODEL_RULE,
)
from niodoo_supervisor.logs.counters import clip_field_name
from niodoo_supervisor.logs.line import LogRecord, ParsedLine, split_line
from niodoo_supervisor.logs.operator_rules import compile_linear, required_literals
from niodoo_supervisor.logs.request_hints import ServedNames, lora_name_hint, unknown_model_hint
from niodoo_supervisor.logs.rule_types import Action, Event, Rule, Severity
from niodoo_supervisor.logs.scan import MAX_LINE, ChunkScanner, HitRecord
from niodoo_supervisor.logs.trust import ONLY_RULES, LineKind, line_kind, trusted_starts

__all__ = ["MAX_TEXT", "EventScanner", "RuleSet", "clip"]

_LINE_CUT_HINT = (
    "A line of vLLM's output was longer than {limit} bytes: only its first {limit} bytes "
    "were matched against the rules (its full text is in the log file). Clients can cause "
    "such lines, for example with very long request field names."
)
_NOT_ACTED_ON = (
    "Logged after vLLM's HTTP server started, when a client's request could have caused "
    "the line: reported, not acted on."
)
MAX_TEXT = 1000  # characters kept of an event's message and of each of its lines
KEEP_LINES = 50  # first and last lines kept of a longer record
MAX_NAMES = 32  # ignored field names an event lists; it counts the rest
_MEMO_MESSAGE = 512  # longer messages are matched afresh each time (they are rare)
_MEMO_ENTRIES = 4096

# Groups of the built-in patterns (`builtin_rules`) that hold numbers (an adapter named "7"
# stays a string).
# fmt: off
_NUMBERS = frozenset(("rank", "max_lora_rank", "max_cpu_loras", "max_loras", "errno",
                      "exit_code", "tokens", "max_model_len", "estimated_max_model_len",
                      "seconds", "gib", "free", "total", "done"))
# fmt: on
# One name of a Python set/list repr ({'lora_name', "it's"}). The closing quote is optional,
# so a name cut off with its line is still a name, and no match ever fails late: the search
# costs time linear in the text.
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'?|\"((?:[^\"\\]|\\.)*)\"?")

_Match = tuple[int, dict[str, Any], str]


def _fields(text: str) -> tuple[list[str], int]:
    """The first MAX_NAMES field names (cut to a bounded length, sorted) and how many more."""
    names: list[str] = []
    more = 0
    for m in _QUOTED.finditer(text):
        if len(names) < MAX_NAMES:
            names.append(clip_field_name(m[1] if m[1] is not None else m[2]))
        else:
            more += 1
    return sorted(names), more


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [niodoo-supervisor: {len(text) - limit} characters cut]"


def _cap(lines: tuple[str, ...], keep: int = KEEP_LINES) -> tuple[str, ...]:
    if len(lines) > 2 * keep:
        cut = f"[niodoo-supervisor] {len(lines) - 2 * keep} lines left out"
        lines = (*lines[:keep], cut, *lines[-keep:])
    return tuple(clip(line) for line in lines)


class RuleSet:
    """The built-in rules plus the operator's (`user_rules`), compiled with their anchors;
    turns records into events. `builtin=False` leaves the built-in table out (tests);
    `served` names what the config serves, for the request mistakes' hints."""

    def __init__(
        self,
        user_rules: Iterable[Rule] = (),
        *,
        builtin: bool = True,
        max_line: int = MAX_LINE,
        served: ServedNames | None = None,
    ) -> None:
        self.rules = (*(BUILTIN_RULES if builtin else ()), *user_rules)
        self.max_line = max_line
        self.served = served
        self._compiled: list[tuple[Rule, Any]] = []
        by_anchor: dict[str, list[int]] = {}
        for k, rule in enumerate(self.rules):
            anchors = rule.anchors or required_literals(rule.pattern)
            if not anchors:
                raise ValueError(f"rule {rule.name!r}: no anchor text; give `anchors`")
            self._compiled.append((rule, compile_linear(rule.pattern)))
            for anchor in anchors:
                by_anchor.setdefault(anchor, []).append(k)
        # Which rules a line may match: those with an anchor in it (checked in C, per line).
        self._by_anchor = tuple((a, tuple(ks)) for a, ks in by_anchor.items())
        self._only = {
            kind: tuple(k for k, rule in enumerate(self.rules) if rule.name in names)
            for kind, names in ONLY_RULES.items()
        }
        self.anchors = tuple(sorted(a.encode() for a in by_anchor))
        self._memo: dict[tuple[LineKind, str], tuple[_Match, ...]] = {}
        self._single: dict[str, tuple[Event, ...]] = {}  # events of one-line records

    def scanner(self) -> EventScanner:
        return EventScanner(self)

    def events(
        self,
        record: LogRecord,
        hit_lines: Sequence[int] | None = None,
        parsed: Sequence[ParsedLine] | None = None,
    ) -> list[Event]:
        """Events of one record, at most one per rule. `hit_lines` limits the lines tried;
        `parsed` are those lines already parsed (the scanner has them).

        Identical one-line records (a client sending lora_name on every request makes the
        same line many times a second) share their events: do not change an event."""
        if len(record.lines) == 1 and len(record.lines[0]) <= _MEMO_MESSAGE:
            known = self._single.get(record.lines[0])
            if known is None:
                if len(self._single) >= _MEMO_ENTRIES:
                    self._single.clear()
                known = self._single[record.lines[0]] = tuple(
                    self._events(record, hit_lines, parsed)
                )
            return list(known)
        return self._events(record, hit_lines, parsed)

    def _events(
        self,
        record: LogRecord,
        hit_lines: Sequence[int] | None,
        parsed: Sequence[ParsedLine] | None,
    ) -> list[Event]:
        events: list[Event] = []
        fired: set[int] = set()
        cut = 0
        lines = range(len(record.lines)) if hit_lines is None else hit_lines
        for n, i in enumerate(lines):
            line = split_line(record.lines[i]) if parsed is None else parsed[n]
            cut = max(cut, line.cut)
            message = line.message
            for k, details, hint in self._matches(line_kind(line), message):
                if k not in fired:
                    fired.add(k)
                    rule = self._compiled[k][0]
                    own = {key: list(v) if isinstance(v, list) else v for key, v in details.items()}
                    events.append(_event(rule, hint, message, record, own))
        if cut:
            hint = _LINE_CUT_HINT.format(limit=self.max_line)
            rule = Rule(LINE_CUT_RULE, "", Severity.WARNING, Action.LOG, hint)
            events.append(_event(rule, hint, record.message, record, {"bytes": cut}))
        return events

    def matches(self, line: ParsedLine) -> list[str]:
        """The rules `line` matches, anchors aside (tests compare the scanner with this)."""
        kind = line_kind(line)
        if kind is LineKind.REQUEST:
            return []
        candidates = range(len(self.rules)) if kind is LineKind.VLLM else self._only[kind]
        starts = trusted_starts(line.message)
        return [self.rules[k].name for k in candidates if self._match(k, line.message, starts)]

    def _matches(self, kind: LineKind, message: str) -> tuple[_Match, ...]:
        # Memoised: a client sending lora_name makes the same line on every request.
        key = (kind, message)
        found = self._memo.get(key)
        if found is None:
            found = tuple(self._find(kind, message))
            if len(message) <= _MEMO_MESSAGE:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.clear()
                self._memo[key] = found
        return found

    def _find(self, kind: LineKind, message: str) -> Iterable[_Match]:
        if kind is LineKind.REQUEST:
            return
        if kind in self._only:
            candidates: Iterable[int] = self._only[kind]
        else:
            candidates = sorted(
                {k for anchor, ks in self._by_anchor if anchor in message for k in ks}
            )
        starts = trusted_starts(message)
        for k in candidates:
            m = self._match(k, message, starts)
            if m is not None:
                yield (k, *_details(self._compiled[k][0], m, self.served))

    def _match(self, k: int, message: str, starts: tuple[str, ...]) -> Any:
        rule, regex = self._compiled[k]
        if rule.anywhere:
            return regex.search(message)
        for text in starts:
            m = regex.match(text)
            if m is not None:
                return m
        return None


def _event(
    rule: Rule, hint: str, message: str, record: LogRecord, details: dict[str, Any]
) -> Event:
    return Event(
        rule.name, rule.severity, rule.action, hint, clip(message.strip()),
        record.process, record.pid, record.timestamp, _cap(record.lines), details,
    )  # fmt: skip


def _value(name: str, text: str) -> Any:
    if name in _NUMBERS:
        with contextlib.suppress(ValueError):
            return float(text) if "." in text else int(text.replace(",", ""))
    return text.strip()


def _details(rule: Rule, m: Any, served: ServedNames | None) -> tuple[dict[str, Any], str]:
    """The event details of a match, and the hint (which may depend on them)."""
    details: dict[str, Any] = {}
    for key, text in m.groupdict().items():
        if text is None:
            continue
        # path2/version2: alternatives of one pattern cannot reuse a group name
        name = key.rstrip("0123456789")
        if name == "fields":
            details["fields"], more = _fields(text)
            if more:
                details["more_fields"] = more
        elif rule.name == UNKNOWN_MODEL_RULE:
            details[name] = clip_field_name(text)  # the client's name: as short as a field's
        else:
            details[name] = _value(name, clip(text))
    hint = rule.hint
    fields = details.get("fields", [])
    if rule.name == IGNORED_FIELDS_RULE:
        if "lora_name" in fields:
            hint = f"{hint} {lora_name_hint(served)}"
        if any(f.startswith("guided_") for f in fields):
            hint = f"{hint} {_GUIDED_HINT}"
    elif rule.name == UNKNOWN_MODEL_RULE:
        hint = f"{hint} {unknown_model_hint(served)}"
    if rule.phase is not None:
        details["phase"] = rule.phase
    return details, hint


class EventScanner:
    """Events from a byte stream, chunk by chunk (see `ChunkScanner`).

    An open record flushed early (`flush()`) fires its rules then; when it completes,
    only rules it had not fired yet fire, so each rule still fires once per record.

    vLLM takes no request before it logs that its HTTP server starts (`SERVING_PHASES`;
    the static adapters are loaded before). From then on (`serving`), a fatal event may
    come from a line a client caused, so it is reported as an event and not acted on.
    """

    def __init__(self, ruleset: RuleSet) -> None:
        self._rules = ruleset
        self._scanner = ChunkScanner(ruleset.anchors, max_line=ruleset.max_line)
        self._fired: dict[int, set[str]] = {}
        self.serving = False

    @property
    def pending(self) -> bool:
        return self._scanner.pending

    @property
    def cut_lines(self) -> int:
        return self._scanner.cut_lines

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
                    out.append(self._believed(event))
            if not hit.complete:
                self._fired[hit.serial] = fired
        return out

    def _believed(self, event: Event) -> Event:
        if event.action is Action.FATAL and self.serving:
            event = dataclasses.replace(
                event,
                action=Action.LOG,
                hint=f"{event.hint} {_NOT_ACTED_ON}",
                details={**event.details, "not_acted_on": "fatal"},
            )
        answered = event.rule in (IGNORED_FIELDS_RULE, UNKNOWN_MODEL_RULE, *LORA_GUARD_RULES)
        if answered or event.details.get("phase") in SERVING_PHASES:
            self.serving = True
        return event
