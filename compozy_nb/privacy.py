"""Privacy enforcement: redact sensitive text and drop non-persistable messages before they are stored.

A :class:`PrivacyPolicy` mirrors Compozy's ``privacy_policy`` block: a list of redaction patterns, a list
of message roles that must never be persisted, and the string that replaces every match.

Patterns are written for Go's RE2 in Compozy YAML files, but they run here on a backtracking engine (the
`regex <https://pypi.org/project/regex/>`_ package, compiled with ``regex.V0``, i.e. ``re``-compatible
semantics). Two defences keep a hostile or careless pattern from hanging a write:

1. **Load-time structural check** (:func:`check_pattern`). The pattern is parsed with Python's own
   regular-expression parser (``re._parser``, formerly ``sre_parse``) and the parse tree is walked. A
   repeat with no upper bound (``*``, ``+``, ``{n,}``, greedy or lazy) is rejected when its body contains

   * an alternation (``(a|aa)+``), or
   * another variable-width repeat (``(a+)+``, ``(.*)*``, ``(\\w+\\s?)+``, ``(x+x+)+`` ...),

   unless every iteration of the body can match in only one way: the body is a plain sequence of single
   characters and single-character repeats, and each variable repeat is followed by a mandatory single
   character it cannot match (``(?:[a-z0-9-]+\\.)+``, ``(?:-?\\d)+``). Such bodies cannot be split
   between iterations in more than one way, so backtracking stays polynomial. In addition, as Compozy
   does, any group that contains a top-level ``|`` and is directly followed by ``*``, ``+`` or ``{n,}``
   is rejected, because the parser folds some alternations (``(a|b)*``) into character classes. Bounded
   repeats such as ``\\b(?:\\d[ -]*?){13,16}\\b`` are accepted. Also rejected: patterns longer than
   :data:`MAX_PATTERN_LENGTH` characters, empty patterns, patterns that do not parse or compile (including
   ``regex``-only syntax Python's parser cannot read, except ``\\p{..}``, ``[[:alpha:]]`` and ``\\z``,
   which are translated), repeats nested more than 6 deep and counted repeats that unroll to more than
   20,000 elements. The check runs *before* ``regex.compile``, whose own compile time grows exponentially
   with the nesting depth of some repeats.

2. **Run-time bound**. Every substitution is bounded to :data:`DEFAULT_TIMEOUT_S` seconds of CPU time per
   pattern per text. A pattern that runs past it raises :class:`~compozy_nb.errors.PrivacyError`, naming
   the pattern but never the content, and nothing is stored. The structural check is a heuristic (a
   backreference-heavy pattern can still be slow); the timeout is what guarantees the bound.

   ``regex``'s own ``timeout=`` counts the CPU time of the whole *process* (C ``clock()``), so busy
   threads elsewhere (tokenizers, other requests of the server, a notebook's NumPy) can make it fire on a
   trivial text. Two things keep that from failing a write: matching holds the GIL (``concurrent=False``;
   released, ``regex`` re-takes it every few thousand steps and a busy Python thread starves it: 10 s of
   wall time for 0.15 s of work was measured with two such threads), and a timeout is confirmed against
   the CPU clock of the thread that ran the match (``time.thread_time``): when that thread used less than
   the bound, the match is run again with twice the process allowance, at most :data:`_TIMEOUT_ATTEMPTS`
   times in all. Holding the GIL is what any pure-Python work in a worker thread does; the bound keeps it
   short.

Redaction replaces matches literally: backslashes or ``$1`` in the redaction string are not expanded.
Empty matches are left alone, so a pattern such as ``\\d*`` never inserts the redaction string between
characters.

Example:
    >>> policy = PrivacyPolicy([r"\\b\\d{3}-\\d{2}-\\d{4}\\b"], non_persistable_roles=["system"])
    >>> policy.apply([
    ...     {"role": "system", "content": "You are helpful."},
    ...     {"role": "user", "content": "My SSN is 123-45-6789."},
    ... ])
    ([{'role': 'user', 'content': 'My SSN is [REDACTED].'}], 1)
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import regex

from compozy_nb.errors import ConfigError, InvalidPayloadError, PrivacyError

DEFAULT_REDACTION = "[REDACTED]"
"""Replacement used when the policy names none (Compozy's ``default_redaction_string``)."""

DEFAULT_TIMEOUT_S = 0.05
"""Time bound, in seconds of CPU time, of one pattern applied to one text."""

_TIMEOUT_ATTEMPTS = 5
"""Runs of one pattern on one text before a timeout stands even though the thread used less CPU than the
bound (the process allowance doubles on each run: at most 16x the bound on the last)."""

MAX_PATTERN_LENGTH = 1000
"""Longest accepted pattern, in characters."""

# ``re._parser`` on Python >= 3.11, ``sre_parse`` before. Loaded dynamically: neither is typed public API.
try:
    _sre: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - Python 3.10
    _sre = importlib.import_module("sre_parse")

_UNBOUNDED: int = int(_sre.MAXREPEAT)
_REPEAT_OPS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_ATOM_OPS = frozenset({"LITERAL", "NOT_LITERAL", "ANY", "IN"})
_ZERO_WIDTH_OPS = frozenset({"AT", "ASSERT", "ASSERT_NOT"})
_ALTERNATION_OPS = frozenset({"BRANCH", "GROUPREF_EXISTS"})
_MAX_FINITE_SET = 512
_MAX_REPEAT_DEPTH = 6
_MAX_ESTIMATED_SIZE = 20_000

# Single-category classes that share no character (order irrelevant).
_DISJOINT_CATEGORIES = frozenset(
    frozenset(pair)
    for pair in (
        ("CATEGORY_DIGIT", "CATEGORY_SPACE"),
        ("CATEGORY_WORD", "CATEGORY_SPACE"),
        ("CATEGORY_DIGIT", "CATEGORY_NOT_DIGIT"),
        ("CATEGORY_WORD", "CATEGORY_NOT_WORD"),
        ("CATEGORY_SPACE", "CATEGORY_NOT_SPACE"),
        ("CATEGORY_DIGIT", "CATEGORY_NOT_WORD"),
    )
)
_CATEGORY_CLASSES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}
_OPEN_ENDED_BRACES = re.compile(r"\{\d*,\}")

# An element of a parse tree: (opcode, argument).
_Item = tuple[Any, Any]


# --------------------------------------------------------------------------------------------------------
# Pattern checking
# --------------------------------------------------------------------------------------------------------


def check_pattern(pattern: str) -> None:
    """Reject a redaction pattern that is invalid or prone to catastrophic backtracking.

    Args:
        pattern: The regular expression, as written in the ``redact_patterns`` list.

    Raises:
        ConfigError: (``INVALID_CONFIG``) if the pattern is not a string, is empty, is longer than
            :data:`MAX_PATTERN_LENGTH` characters, does not compile, or has an unsafe shape (a nested
            unbounded quantifier or an alternation under one). The message names the pattern and the reason.
    """
    _compile_checked(pattern)


@functools.lru_cache(maxsize=512)
def _compile_checked_cached(pattern: str) -> Any:
    if not pattern:
        raise _pattern_error(pattern, "the pattern is empty")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise _pattern_error(
            pattern, f"the pattern is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}"
        )
    # The structural check runs first: compiling with ``regex`` is itself exponential in the nesting depth
    # of some repeats (``(?:(?:a+){1,3}){1,3}...``), so an unchecked pattern must never reach it.
    translated, opaque = _translate_for_parser(pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning "possible nested set" and the like
            tree = _sre.parse(translated)
    except RecursionError:
        raise _pattern_error(pattern, "groups are nested too deeply") from None
    except Exception as exc:  # re.error, OverflowError ...
        raise _pattern_error(pattern, f"invalid or unsupported regular expression: {exc}") from None
    try:
        reason = _alternation_under_open_repeat(pattern) or _walk(tree, allow_deterministic=not opaque)
        if reason is None and _estimated_size(tree) > _MAX_ESTIMATED_SIZE:
            reason = f"its counted repeats expand to more than {_MAX_ESTIMATED_SIZE} elements"
    except RecursionError:
        reason = "groups are nested too deeply to verify"
    if reason is not None:
        raise _pattern_error(pattern, f"unsafe pattern (catastrophic backtracking risk): {reason}")
    try:
        return regex.compile(pattern, flags=regex.V0)
    except regex.error as exc:
        raise _pattern_error(pattern, f"invalid regular expression: {exc}") from None
    except (RecursionError, OverflowError, ValueError, MemoryError) as exc:
        raise _pattern_error(pattern, f"invalid regular expression: {type(exc).__name__}: {exc}") from None


def _compile_checked(pattern: object) -> Any:
    """Check ``pattern`` and return it compiled with ``regex.V0`` (compiled objects are cached)."""
    if not isinstance(pattern, str):
        raise ConfigError(f"redaction pattern must be a string, got {type(pattern).__name__}", field="redact_patterns")
    return _compile_checked_cached(pattern)


def _pattern_error(pattern: str, reason: str) -> ConfigError:
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    return ConfigError(f"pattern '{shown}': {reason}", field="redact_patterns", pattern=shown)


def _alternation_under_open_repeat(pattern: str) -> str | None:
    """Compozy's textual rule: a group with a top-level ``|`` followed by ``*``, ``+`` or ``{n,}``."""
    stack: list[bool] = []  # one entry per open group: does it contain a top-level "|"?
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
        elif char == "[":
            i = _skip_class(pattern, i)
        elif char == "(" and pattern.startswith("(?#", i):
            end = pattern.find(")", i)
            i = n if end < 0 else end + 1
        elif char == "(":
            stack.append(False)
            i += 1
        elif char == "|":
            if stack:
                stack[-1] = True
            i += 1
        elif char == ")":
            has_alternation = stack.pop() if stack else False
            quantifier = _open_quantifier_at(pattern, i + 1)
            if has_alternation and quantifier is not None:
                return f"alternation inside a group repeated by {quantifier!r}"
            i += 1
        else:
            i += 1
    return None


def _skip_class(pattern: str, start: int) -> int:
    """Index just past the character class opening at ``start``."""
    i, n = start + 1, len(pattern)
    if i < n and pattern[i] == "^":
        i += 1
    if i < n and pattern[i] == "]":
        i += 1
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
        elif char == "[" and pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            i = i + 1 if end < 0 else end + 2
        elif char == "]":
            return i + 1
        else:
            i += 1
    return n


def _open_quantifier_at(pattern: str, index: int) -> str | None:
    """The unbounded quantifier (``*``, ``+``, ``{n,}``) starting at ``index``, if any."""
    if index >= len(pattern):
        return None
    if pattern[index] in "*+":
        return pattern[index]
    match = _OPEN_ENDED_BRACES.match(pattern, index)
    return match.group(0) if match else None


def _translate_for_parser(pattern: str) -> tuple[str, bool]:
    """Rewrite ``regex``-only syntax so Python's parser accepts it with the same structure.

    ``\\p{...}``/``\\P{...}`` become ``\\w``, ``\\z`` becomes ``\\Z``, a POSIX class such as ``[:alpha:]``
    inside a set becomes ``\\w`` and any other ``[`` inside a set is escaped
    (``regex.V0`` has no nested sets).

    Returns:
        The rewritten pattern and whether it contains constructs whose character sets the checker cannot
        reason about (Unicode properties, POSIX classes); for those, the "deterministic body" exemption of
        the nested-repeat rule is disabled.
    """
    out: list[str] = []
    opaque = False
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            escaped = pattern[i + 1]
            if escaped in "pP":  # \pL, \p{Greek}, \P{^Lu}: one character of a set we do not model
                opaque = True
                if i + 2 < n and pattern[i + 2] == "{":
                    end = pattern.find("}", i + 3)
                    i = n if end < 0 else end + 1
                else:
                    i += 3
                out.append(r"\w")
            else:
                out.append(r"\Z" if escaped == "z" else pattern[i : i + 2])
                i += 2
        elif not in_class and char == "[":
            in_class = True
            start = i
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            out.append(pattern[start:i])
        elif in_class and char == "[":
            end = pattern.find(":]", i + 2) if pattern.startswith("[:", i) else -1
            if end >= 0:
                opaque = True
                out.append(r"\w")
                i = end + 2
            else:
                out.append(r"\[")
                i += 1
        else:
            if in_class and char == "]":
                in_class = False
            out.append(char)
            i += 1
    return "".join(out), opaque


def _op(item: _Item) -> str:
    return str(item[0])


def _children(item: _Item) -> list[Any]:
    """Sub-patterns nested directly in a parse-tree item."""
    op, arg = _op(item), item[1]
    if op in _REPEAT_OPS:
        return [arg[2]]
    if op == "SUBPATTERN":
        return [arg[-1]]
    if op == "ATOMIC_GROUP":
        return [arg]
    if op == "BRANCH":
        return list(arg[1])
    if op in ("ASSERT", "ASSERT_NOT"):
        return [arg[1]]
    if op == "GROUPREF_EXISTS":
        return [sub for sub in arg[1:] if sub is not None]
    return []


def _is_unbounded(item: _Item) -> bool:
    return _op(item) in _REPEAT_OPS and int(item[1][1]) >= _UNBOUNDED


def _is_variable(item: _Item) -> bool:
    return _op(item) in _REPEAT_OPS and int(item[1][0]) != int(item[1][1])


def _any_item(tree: Any, predicate: Any) -> bool:
    """Whether ``predicate`` holds for some item of ``tree`` at any depth."""
    return any(predicate(item) or any(_any_item(child, predicate) for child in _children(item)) for item in tree)


def _walk(tree: Any, *, allow_deterministic: bool, depth: int = 0) -> str | None:
    """The first unsafe construct of ``tree``; ``depth`` counts the repeats enclosing it."""
    for item in tree:
        inner_depth = depth
        if _op(item) in _REPEAT_OPS:
            inner_depth += 1
            if inner_depth > _MAX_REPEAT_DEPTH:
                return f"repeats nested more than {_MAX_REPEAT_DEPTH} deep"
        if _is_unbounded(item):
            body = item[1][2]
            if _any_item(body, lambda it: _op(it) in _ALTERNATION_OPS):
                return "alternation inside a repeat with no upper bound"
            if _any_item(body, _is_variable) and not (allow_deterministic and _deterministic(body)):
                return "nested quantifier: a variable-width repeat inside a repeat with no upper bound"
        for child in _children(item):
            reason = _walk(child, allow_deterministic=allow_deterministic, depth=inner_depth)
            if reason is not None:
                return reason
    return None


def _estimated_size(tree: Any) -> int:
    """Rough size of the compiled program: ``regex`` unrolls the mandatory part of counted repeats."""
    total = 0
    for item in tree:
        children = sum(_estimated_size(child) for child in _children(item))
        if _op(item) in _REPEAT_OPS:
            total += max(int(item[1][0]), 1) * max(children, 1)
        else:
            total += 1 + children
        if total > _MAX_ESTIMATED_SIZE:  # stop early; the caller only compares with the limit
            return total
    return total


def _flatten(tree: Any) -> list[_Item] | None:
    """The consuming items of ``tree`` with groups inlined, or ``None`` if it is not a plain sequence.

    Each returned item is an atom (one character) or a repeat whose body is exactly one atom.
    """
    items: list[_Item] = []
    for item in tree:
        op = _op(item)
        if op in _ZERO_WIDTH_OPS:
            continue
        if op in _ATOM_OPS:
            items.append(item)
        elif op in ("SUBPATTERN", "ATOMIC_GROUP"):
            inner = _flatten(_children(item)[0])
            if inner is None:
                return None
            items.extend(inner)
        elif op in _REPEAT_OPS:
            inner = _flatten(item[1][2])
            if inner is None or len(inner) != 1 or _op(inner[0]) not in _ATOM_OPS:
                return None
            items.append((item[0], (item[1][0], item[1][1], inner[0])))
        else:
            return None
    return items


def _deterministic(body: Any) -> bool:
    """Whether each iteration of ``body`` can match in at most one way from a given start.

    True when the body is a sequence of single-character atoms and single-character repeats in which each
    variable repeat (unless possessive) is followed, within the body or - for the last one - by the body's
    first item of the next iteration, by a mandatory character disjoint from the repeated one.
    """
    items = _flatten(body)
    if not items:
        return False
    for index, item in enumerate(items):
        if not _is_variable(item) or _op(item) == "POSSESSIVE_REPEAT":
            continue
        follower = items[(index + 1) % len(items)]
        if _op(follower) in _REPEAT_OPS:
            if int(follower[1][0]) < 1:  # optional: the character after it is not mandatory
                return False
            follower_atom = follower[1][2]
        else:
            follower_atom = follower
        if follower is item or not _disjoint(item[1][2], follower_atom):
            return False
    return True


def _finite_chars(atom: _Item) -> set[int] | None:
    """The code points an atom matches, when it is a small explicit set."""
    op, arg = _op(atom), atom[1]
    if op == "LITERAL":
        return {int(arg)}
    if op != "IN":
        return None
    chars: set[int] = set()
    for member in arg:
        member_op = _op(member)
        if member_op == "LITERAL":
            chars.add(int(member[1]))
        elif member_op == "RANGE":
            low, high = int(member[1][0]), int(member[1][1])
            if high - low + len(chars) > _MAX_FINITE_SET:
                return None
            chars.update(range(low, high + 1))
        else:  # NEGATE, CATEGORY, ...
            return None
    return chars


def _single_category(atom: _Item) -> str | None:
    if _op(atom) == "IN" and len(atom[1]) == 1 and _op(atom[1][0]) == "CATEGORY":
        return str(atom[1][0][1])
    return None


def _case_variants(code: int) -> set[str]:
    char = chr(code)
    variants = {char, char.lower(), char.upper(), char.casefold(), char.swapcase()}
    return {variant for variant in variants if len(variant) == 1}


def _in_category(category: str, char: str) -> bool:
    """Whether ``char`` may belong to ``category`` under any of the Unicode/ASCII/``regex`` definitions."""
    cls = _CATEGORY_CLASSES.get(category)
    if cls is None:
        return True
    return bool(re.fullmatch(cls, char) or re.fullmatch(cls, char, re.ASCII) or regex.fullmatch(cls, char, regex.V0))


def _may_match(atom: _Item, char: str) -> bool:
    """Conservative: ``False`` only when ``atom`` certainly does not match ``char``."""
    op, arg = _op(atom), atom[1]
    code = ord(char)
    if op == "LITERAL":
        return code == int(arg)
    if op == "NOT_LITERAL":
        return code != int(arg)
    if op != "IN":
        return True
    negate = False
    hit = False
    for member in arg:
        member_op = _op(member)
        if member_op == "NEGATE":
            negate = True
        elif member_op == "LITERAL":
            hit = hit or code == int(member[1])
        elif member_op == "RANGE":
            hit = hit or int(member[1][0]) <= code <= int(member[1][1])
        elif member_op == "CATEGORY":
            hit = hit or _in_category(str(member[1]), char)
        else:
            return True
    return not hit if negate else hit


def _disjoint(first: _Item, second: _Item) -> bool:
    """Whether two single-character atoms provably share no character (case variants included)."""
    for finite, other in ((first, second), (second, first)):
        chars = _finite_chars(finite)
        if chars is not None:
            return not any(_may_match(other, variant) for code in chars for variant in _case_variants(code))
    categories = {_single_category(first), _single_category(second)}
    return None not in categories and frozenset(categories) in _DISJOINT_CATEGORIES


# --------------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------------


class PrivacyPolicy:
    """Redaction patterns and non-persistable roles, compiled once and applied before storage.

    Args:
        redact_patterns: Regular expressions (RE2-style, run with ``regex.V0``) whose matches are replaced,
            applied in order. Each is checked with :func:`check_pattern`.
        non_persistable_roles: Message roles that are never stored, compared case-insensitively.
        redaction: Literal replacement for every match.
        timeout_s: Time bound, in seconds, of one pattern applied to one text.

    Raises:
        ConfigError: If a pattern is unsafe or invalid, a role or the redaction is not a string, or
            ``timeout_s`` is not a positive finite number.

    Example:
        >>> PrivacyPolicy([r"\\d{4}"], redaction="****").redact("PIN 1234")
        'PIN ****'
    """

    __slots__ = ("_compiled", "_folded_roles", "_patterns", "_redaction", "_roles", "_timeout_s")

    def __init__(
        self,
        redact_patterns: Sequence[str] = (),
        non_persistable_roles: Sequence[str] = (),
        redaction: str = DEFAULT_REDACTION,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if isinstance(redact_patterns, str):
            raise ConfigError("redact_patterns must be a list of patterns, not a string", field="redact_patterns")
        if isinstance(non_persistable_roles, str):
            raise ConfigError(
                "non_persistable_roles must be a list of roles, not a string", field="non_persistable_roles"
            )
        if not isinstance(redaction, str):
            raise ConfigError(f"redaction must be a string, got {type(redaction).__name__}", field="redaction")
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, (int, float))
            or not math.isfinite(timeout_s)
            or timeout_s <= 0
        ):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}", field="timeout_s")
        for role in non_persistable_roles:
            if not isinstance(role, str):
                raise ConfigError(
                    f"non-persistable role must be a string, got {type(role).__name__}",
                    field="non_persistable_roles",
                )
        self._patterns: tuple[str, ...] = tuple(redact_patterns)
        self._compiled: tuple[Any, ...] = tuple(_compile_checked(pattern) for pattern in self._patterns)
        self._roles: tuple[str, ...] = tuple(non_persistable_roles)
        self._folded_roles: frozenset[str] = frozenset(role.casefold() for role in self._roles)
        self._redaction = redaction
        self._timeout_s = float(timeout_s)

    @property
    def redact_patterns(self) -> tuple[str, ...]:
        """The redaction patterns, in the order they are applied."""
        return self._patterns

    @property
    def non_persistable_roles(self) -> tuple[str, ...]:
        """The roles that are never stored, as given."""
        return self._roles

    @property
    def redaction(self) -> str:
        """The literal string that replaces each match."""
        return self._redaction

    @property
    def timeout_s(self) -> float:
        """Time bound, in seconds, of one pattern applied to one text."""
        return self._timeout_s

    def __repr__(self) -> str:
        return (
            f"PrivacyPolicy(redact_patterns={list(self._patterns)!r}, "
            f"non_persistable_roles={list(self._roles)!r}, redaction={self._redaction!r}, "
            f"timeout_s={self._timeout_s!r})"
        )

    def is_empty(self) -> bool:
        """Whether the policy neither redacts nor drops anything."""
        return not self._patterns and not self._folded_roles

    def persistable(self, role: str) -> bool:
        """Whether messages with ``role`` may be stored (case-insensitive comparison).

        Args:
            role: A message role such as ``"user"``.

        Returns:
            ``False`` if the role is one of :attr:`non_persistable_roles`.
        """
        return str(role).casefold() not in self._folded_roles

    def redact(self, text: str) -> str:
        """Replace every match of every pattern, in order, with :attr:`redaction`.

        Args:
            text: Text to redact.

        Returns:
            The redacted text (``text`` itself when there are no patterns).

        Raises:
            PrivacyError: (``PRIVACY_ERROR``) if a pattern runs past :attr:`timeout_s` of CPU time. The
                message names the pattern, never the text.
        """
        for pattern, compiled in zip(self._patterns, self._compiled, strict=True):
            text = self._sub(pattern, compiled, text)
        return text

    def _sub(self, pattern: str, compiled: Any, text: str) -> str:
        """One pattern on one text, bounded to :attr:`timeout_s` of this thread's CPU time (see module doc)."""
        bound = self._timeout_s
        allowance = bound
        started = time.thread_time()
        for _ in range(_TIMEOUT_ATTEMPTS):
            try:
                return str(compiled.sub(self._replacement, text, timeout=allowance, concurrent=False))
            except TimeoutError:
                if time.thread_time() - started >= bound:
                    break  # the pattern itself used the whole bound: a real timeout
                allowance *= 2  # other threads' CPU time ran the process clock out: run again
        raise PrivacyError(
            f"redaction pattern '{pattern}' ran past {bound:g}s of CPU time; nothing was stored",
            operation="redact",
            pattern=pattern,
        )

    def _replacement(self, match: Any) -> str:
        # A callable keeps the redaction literal; empty matches (e.g. of ``\d*``) are left alone.
        return self._redaction if match.end() > match.start() else ""

    def _redact_value(self, value: Any, field: str) -> Any:
        """Redact the string leaves and the mapping keys of a JSON-like value, rebuilding containers.

        Raises:
            InvalidPayloadError: two keys of one mapping become the same once redacted.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return self._redact_mapping(value, field, frozenset())
        if isinstance(value, list):
            return [self._redact_value(item, f"{field}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(self._redact_value(item, f"{field}[{i}]") for i, item in enumerate(value))
        return value

    def _redact_mapping(self, value: Mapping[Any, Any], field: str, kept: frozenset[str]) -> dict[Any, Any]:
        """Redact keys (except ``kept``) and values; a collision of redacted keys is refused."""
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = key if key in kept or not isinstance(key, str) else self.redact(key)
            if name in out:
                raise InvalidPayloadError(
                    f"{field}: two field names become the same once redacted; rename them",
                    operation="redact",
                    field=field,
                )
            out[name] = self._redact_value(item, f"{field}.{name}")
        return out

    def _redact_message(self, message: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Redact one message: text, parts, tool call arguments, name, extra fields (values and names)."""
        copy = self._redact_mapping({k: v for k, v in message.items() if k not in _STRUCTURED}, where, _MESSAGE_FIELDS)
        for name in _STRUCTURED:
            if name in message:
                copy[name] = message[name]
        for name in _IDENTIFIERS:
            if name in message:
                copy[name] = message[name]
        content = message.get("content")
        if isinstance(content, list):
            copy["content"] = [self._redact_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            copy["tool_calls"] = [self._redact_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)]
        return copy

    def _redact_part(self, part: Any, field: str) -> Any:
        """A content part: its text redacted; binary data (``data:`` URLs, base64 audio/files) left whole."""
        if not isinstance(part, Mapping):
            return part
        kind = str(part.get("type", ""))
        out = dict(part)
        for name, value in part.items():
            if name == "type":
                continue
            if isinstance(value, Mapping) and name == kind:
                out[name] = {
                    k: v if _binary(kind, k, v) else self._redact_value(v, f"{field}.{name}.{k}")
                    for k, v in value.items()
                }
            else:
                out[name] = self._redact_value(value, f"{field}.{name}")
        return out

    def _redact_call(self, call: Any, field: str) -> Any:
        """A tool call: ``arguments`` redacted as JSON (values and keys, still valid JSON); id and name kept."""
        if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
            return call
        function = dict(call["function"])
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            function["arguments"] = self._redact_arguments(arguments, f"{field}.function.arguments")
        return {**call, "function": function}

    def _redact_arguments(self, arguments: str, field: str) -> str:
        try:
            decoded = json.loads(arguments)
        except ValueError:
            return self.redact(arguments)
        redacted = self._redact_value(decoded, field)
        if redacted == decoded:
            return arguments  # unchanged: keep the model's exact bytes
        return json.dumps(redacted, ensure_ascii=False)

    def apply(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Prepare messages for storage.

        Messages whose role is non-persistable are dropped. The others are copied and every string they
        store is redacted: ``content`` (text and text parts), ``name``, tool call arguments (decoded as JSON:
        values and keys redacted, re-encoded as valid JSON), ``metadata`` and any extra field, at any depth,
        mapping keys included. Identifiers are kept: ``role``, ``id``, ``tool_call_id``, a tool call's ``id``,
        ``type`` and function name, part types; and so is binary data (``data:`` image URLs, base64 audio and
        files). The input is never mutated.

        Args:
            messages: Messages as mappings with ``role`` and ``content``.

        Returns:
            The messages to store and the number dropped because of their role.

        Raises:
            PrivacyError: If a redaction runs past its time bound.
            InvalidPayloadError: If two mapping keys become the same once redacted.
        """
        if self.is_empty():
            return [dict(message) for message in messages], 0
        kept: list[dict[str, Any]] = []
        skipped = 0
        for index, message in enumerate(messages):
            if not self.persistable(message.get("role", "")):
                skipped += 1
                continue
            kept.append(self._redact_message(message, f"payload[{index}]") if self._compiled else dict(message))
        return kept, skipped


def _binary(kind: str, name: str, value: Any) -> bool:
    if kind == "image_url" and name == "url":
        return isinstance(value, str) and value.startswith("data:")
    return (kind, name) in (("input_audio", "data"), ("file", "file_data"))


_IDENTIFIERS = frozenset({"role", "id", "tool_call_id"})
_STRUCTURED = frozenset({"role", "id", "tool_call_id", "tool_calls"})
_MESSAGE_FIELDS = frozenset({"role", "content", "id", "name", "tool_calls", "tool_call_id", "refusal", "metadata"})

__all__ = [
    "DEFAULT_REDACTION",
    "DEFAULT_TIMEOUT_S",
    "MAX_PATTERN_LENGTH",
    "PrivacyPolicy",
    "check_pattern",
]
