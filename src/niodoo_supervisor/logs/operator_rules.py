"""Operator rules: compiled from the config's YAML list (`compile_user_rules`), with anchor
texts derived from each rule's regex (`required_literals`) unless the rule lists them.

Every rule's pattern runs on RE2 (`compile_linear`): its time is linear in the text whatever
the pattern, which no review of an operator's regex could promise with Python's
backtracking `re` (vLLM's lines can hold text of any length that a client chose). RE2 has
no look-around and no back-references; a pattern that needs them is refused with that
reason. A fatal or check_now rule matches only at the start of vLLM's message or right
after a leading exception type (``ValueError: ``), where no client text stands; log and
phase rules match anywhere in a line vLLM wrote (never in one that quotes a request).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping
from typing import Any

import re2

from niodoo_supervisor.logs.builtin_rules import BUILTIN_RULES, LINE_CUT_RULE
from niodoo_supervisor.logs.rule_types import Action, Rule, Severity

__all__ = ["compile_linear", "compile_user_rules", "required_literals"]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as config problems, not on stderr


def compile_linear(pattern: str) -> Any:
    """`pattern` compiled by RE2 (the `re` API: search, match, groupdict); raises re2.error."""
    return re2.compile(pattern, _RE2_OPTIONS)


def _re2_fix(reason: str) -> str:
    """What to do about a pattern Python's `re` takes and RE2 refuses, by RE2's reason."""
    if "repetition" in reason:
        return (
            "rules run on RE2 (linear time), which allows at most 1000 repetitions; "
            "use a smaller count or `+`/`*`"
        )
    if "perl operator" in reason or "escape sequence" in reason:
        return (
            "rules run on RE2 (linear time), which has no look-around or back-references; "
            "rewrite the pattern without them"
        )
    return "rules run on RE2 (linear time); rewrite the pattern in RE2's syntax"


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
    seen[LINE_CUT_RULE] = "a built-in event"
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
            compile_linear(pattern)
        except re.error as exc:
            errors.append(f"{where}.pattern: invalid regex: {exc}; fix the pattern")
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            errors.append(f"{where}.pattern: {reason}: {_re2_fix(str(reason))}")
        else:
            anchors = _user_anchors(item.get("anchors"), pattern, where, errors)
    if len(errors) > n_errors or anchors is None:
        return None
    assert isinstance(name, str) and isinstance(pattern, str) and isinstance(hint, str)
    assert severity is not None and action is not None
    if action is Action.PHASE and phase is None:
        phase = name
    return Rule(
        name, pattern, severity, action, hint, anchors, phase if isinstance(phase, str) else None,
        anywhere=action in (Action.LOG, Action.PHASE),
    )  # fmt: skip


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
