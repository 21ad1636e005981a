"""Go-style ``{{ .path }}`` templates (as in Compozy) evaluated in a Jinja2 sandbox.

Compozy renders memory keys and payloads with Go's ``text/template``. This module accepts the small,
safe subset of that language that memory configurations use, and nothing else:

* ``{{ .user_id }}``, ``{{ .workflow.input.user_id }}``, ``{{ .messages.0.content }}`` -- a path
  starting with a dot. Numeric segments index lists; on a map they are ordinary (string) keys.
  Segments may contain letters, digits, ``_`` and ``-`` but must not start with ``_``.
* ``{{ . }}`` -- the whole context.
* ``{{ index . "project.id" }}`` / ``{{ index .workflow.input "some key" 0 }}`` -- Go's ``index``
  with one or more keys (double-quoted or back-quoted strings, or non-negative integers), for keys
  that a dotted path cannot spell. The keys are plain map/list lookups, never attribute access.
* Any of the above followed by pipes to allow-listed filters: ``upper``, ``lower``, ``trim``,
  ``json`` (compact JSON dump) and ``length``, e.g. ``{{ .name | trim | upper }}``.
* Go's whitespace trim markers ``{{- ... -}}``.

Everything outside ``{{ }}`` is literal text: ``{%``, ``{#`` and single braces are never interpreted.
Everything else inside ``{{ }}`` (calls, operators, literals, Go actions such as ``range``, other
filters, private ``_segments``) raises :class:`~compozy_nb.errors.TemplateError`.

Each template is parsed once (``functools.lru_cache``) into literal text plus expressions; all the
expressions of a template are translated to one Jinja tuple expression of subscripts
(``(ctx["a"]["b"]|upper, ctx["c"],)``) compiled by a :class:`~jinja2.sandbox.SandboxedEnvironment`
whose filters are only the allow-list, with no globals and no tests, and whose ``getitem`` never
falls back to attribute access (Jinja's default turns ``ctx["items"]`` into ``dict.items``).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2.environment import TemplateExpression
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.sandbox import SandboxedEnvironment

from compozy_nb.errors import TemplateError

__all__ = [
    "FILTERS",
    "evaluate",
    "format_value",
    "has_template",
    "referenced_paths",
    "render",
    "render_key",
    "render_value",
    "validate",
]

Key = str | int
"""One lookup step: a map key (``str``) or, from ``index``, an integer list index."""

_MISSING: Any = object()
MAX_TEMPLATE_CHARS = 64 * 1024
"""Longest template accepted (checked before parsing; the default ``max_message_bytes`` is 64 KiB too)."""
MAX_EXPRESSIONS = 256
"""Most ``{{ }}`` blocks in one template."""
_CACHE_SIZE = 256
_PROGRAM_CHUNK = 32  # expressions per compiled Jinja program: compile time stays linear in their number
_MAX_LISTED_KEYS = 10
_MAX_QUOTED_TEMPLATE = 200


# --------------------------------------------------------------------------------------------------
# Value formatting and filters
# --------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


def _to_json(value: Any) -> str:
    if isinstance(value, Mapping) and not isinstance(value, dict):
        value = dict(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def format_value(value: Any) -> str:
    """Format one value the way Go templates print it into text.

    Args:
        value: The value an expression produced.

    Returns:
        ``str`` as is; ``None`` as ``""``; ``bool`` as ``true``/``false``; ``int``/``float`` via
        ``str``; maps, lists and tuples as compact JSON; anything else via ``str``.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping | list | tuple):
        return _to_json(value)
    return str(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


class _FilterError(Exception):
    """A filter that cannot apply to its input; turned into a TemplateError quoting the template."""


def _filter_upper(value: Any) -> Any:
    if isinstance(value, Undefined):
        return value
    return format_value(value).upper()


def _filter_lower(value: Any) -> Any:
    if isinstance(value, Undefined):
        return value
    return format_value(value).lower()


def _filter_trim(value: Any) -> Any:
    if isinstance(value, Undefined):
        return value
    return format_value(value).strip()


def _filter_json(value: Any) -> Any:
    if isinstance(value, Undefined):
        return value
    return _to_json(value)


def _filter_length(value: Any) -> Any:
    if isinstance(value, Undefined):
        return value
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    raise _FilterError(f"filter 'length' needs a string, list or map, got {_type_name(value)}")


FILTERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "json": _filter_json,
        "length": _filter_length,
        "lower": _filter_lower,
        "trim": _filter_trim,
        "upper": _filter_upper,
    }
)
"""The only filters a template may pipe to."""

_ALLOWED_HINT = (
    '(allowed: {{ .path.to.value }}, {{ . }}, {{ index .path "key" }}, '
    f"optionally piped to {', '.join(sorted(FILTERS))})"
)


# --------------------------------------------------------------------------------------------------
# Lookups (shared by the sandbox and by the missing-variable diagnosis)
# --------------------------------------------------------------------------------------------------


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit()


def _lookup(obj: Any, key: Key) -> Any:
    """Look ``key`` up in ``obj`` like Go's ``index``; ``_MISSING`` when absent.

    Maps are looked up by key (a digit string falls back to the integer key and vice versa); lists
    and tuples by non-negative integer or digit string; nothing else has keys. Never touches
    attributes.
    """
    if type(obj) is dict or isinstance(obj, Mapping):
        try:
            return obj[key]
        except (KeyError, TypeError):
            pass
        alternative: Key | None = None
        if isinstance(key, int):
            alternative = str(key)
        elif _is_index(key):
            alternative = int(key)
        if alternative is not None:
            try:
                return obj[alternative]
            except (KeyError, TypeError):
                pass
        return _MISSING
    if isinstance(obj, list | tuple):
        index = key if isinstance(key, int) else int(key) if _is_index(key) else -1
        if 0 <= index < len(obj):
            return obj[index]
    return _MISSING


class _Sandbox(SandboxedEnvironment):
    """Sandboxed environment whose subscripts are pure map/list lookups (no attribute fallback)."""

    def getitem(self, obj: Any, argument: str | Any) -> Any | Undefined:
        if isinstance(obj, Undefined):
            return obj
        if not isinstance(argument, str | int):
            return self.undefined(obj=obj, name=str(argument))
        value = _lookup(obj, argument)
        if value is _MISSING:
            return self.undefined(obj=obj, name=str(argument))
        return value

    def getattr(self, obj: Any, attribute: str) -> Any | Undefined:
        return self.undefined(obj=obj, name=attribute)


def _make_environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False)
    env.filters = dict(FILTERS)
    env.globals = {}
    env.tests = {}
    return env


_ENV = _make_environment()


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
_SEGMENT_RE = re.compile(_SEGMENT)
_TOKEN_RE = re.compile(
    rf"""
      (?P<ws>\s+)
    | (?P<pipe>\|)
    | (?P<path>\.(?:{_SEGMENT}(?:\.{_SEGMENT})*)?)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|`[^`]*`)
    | (?P<number>[0-9][0-9A-Za-z_.]*)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_GO_ACTIONS = frozenset({"range", "if", "else", "end", "with", "define", "template", "block", "break", "continue"})
_OPERATOR_CHARS = frozenset("+-*/%<>=!~&^")


@dataclass(frozen=True, slots=True)
class _Expr:
    """One ``{{ }}`` block: the lookups from the context root, then the filters."""

    source: str
    keys: tuple[Key, ...]
    filters: tuple[str, ...]

    @property
    def display(self) -> str:
        return _display(self.keys)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A parsed template: ``literals[0] expr[0] literals[1] ... expr[n-1] literals[n]``."""

    template: str
    literals: tuple[str, ...]
    exprs: tuple[_Expr, ...]
    single: bool
    programs: tuple[TemplateExpression, ...]


def _display(keys: tuple[Key, ...]) -> str:
    """``('workflow', 'input', 'a b')`` -> ``.workflow.input["a b"]``; ``()`` -> ``.``."""
    if not keys:
        return "."
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif _SEGMENT_RE.fullmatch(key) and not key.startswith("_"):
            parts.append(f".{key}")
        else:
            parts.append(f"[{json.dumps(key, ensure_ascii=False)}]")
    if parts[0].startswith("["):
        parts.insert(0, ".")
    return "".join(parts)


def _quote(template: str, start: int = 0, end: int = 0) -> str:
    """The template quoted for an error message, shortened around ``[start:end)`` when long."""
    if len(template) <= _MAX_QUOTED_TEMPLATE:
        return repr(template)
    margin = 60
    lo = max(0, start - margin)
    hi = min(len(template), max(end, start) + margin)
    return repr(("…" if lo > 0 else "") + template[lo:hi] + ("…" if hi < len(template) else ""))


def _syntax_error(detail: str, template: str, start: int, end: int) -> TemplateError:
    block = template[start:end]
    return TemplateError(
        f"{detail}: {block!r} in template {_quote(template, start, end)} {_ALLOWED_HINT}",
        template=template,
    )


def _find_block_end(template: str, start: int) -> int:
    """Index of the ``}}`` closing the block opened at ``start``, skipping quoted strings; -1 if none."""
    i = start + 2
    n = len(template)
    while i < n:
        char = template[i]
        if char == '"':
            i += 1
            while i < n and template[i] != '"':
                i += 2 if template[i] == "\\" else 1
            if i >= n:
                return -1
        elif char == "`":
            i = template.find("`", i + 1)
            if i < 0:
                return -1
        elif char == "}" and template.startswith("}}", i):
            return i
        i += 1
    return -1


def _tokenize(content: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(content):
        match = _TOKEN_RE.match(content, pos)
        if match is None:
            tokens.append(("other", content[pos]))
            pos += 1
            continue
        kind = match.lastgroup or "other"
        if kind != "ws":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _describe_unexpected(kind: str, text: str) -> str:
    if kind == "other":
        if text in "()":
            return "function calls and parentheses are not allowed"
        if text in _OPERATOR_CHARS:
            return f"operators and arithmetic are not allowed ({text!r})"
        if text == "'":
            return "string literals are not allowed"
        if text in "[]":
            return "brackets are not allowed (use 'index' for keys a path cannot spell)"
        if text == "$":
            return "variables are not allowed"
        if text in "{}":
            return "nested braces are not allowed"
        return f"unexpected character {text!r}"
    if kind in ("string", "number"):
        return f"literal values are not allowed ({text!r})"
    if kind == "word":
        if text in _GO_ACTIONS:
            return f"Go actions are not allowed ({text!r})"
        return f"{text!r} is not allowed (only paths starting with '.' and 'index')"
    if kind == "pipe":
        return "a pipe needs a value before it"
    return f"unexpected {text!r}"


def _path_keys(text: str) -> tuple[str, ...]:
    keys = tuple(segment for segment in text.split(".") if segment)
    for key in keys:
        if key.startswith("_"):
            raise ValueError(f"path segment {key!r} is not allowed (segments must not start with '_')")
    return keys


def _literal_key(kind: str, text: str) -> Key:
    if kind == "number":
        if not text.isdigit():
            raise ValueError(f"invalid index {text!r} (only non-negative integers)")
        return int(text)
    if text.startswith("`"):
        return text[1:-1]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"invalid string literal {text}") from exc
    if not isinstance(value, str):
        raise ValueError(f"invalid string literal {text}")
    try:  # join JSON-style surrogate pairs ("\\ud83d\\ude00") into one character
        return value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        return value


def _parse_expression(content: str) -> tuple[tuple[Key, ...], tuple[str, ...]]:
    """Parse the inside of one block; raises ``ValueError`` with the problem description."""
    tokens = _tokenize(content)
    if not tokens:
        raise ValueError("empty expression")
    operators = [text for kind, text in tokens if kind == "other" and text in _OPERATOR_CHARS]
    if operators:
        raise ValueError(f"operators and arithmetic are not allowed ({operators[0]!r})")
    kind, text = tokens[0]
    keys: tuple[Key, ...]
    pos = 1
    if kind == "path":
        keys = _path_keys(text)
    elif kind == "word" and text == "index":
        if len(tokens) < 2 or tokens[1][0] != "path":
            raise ValueError("'index' needs a path ('.' or '.a.b') and then one or more keys")
        keys = _path_keys(tokens[1][1])
        pos = 2
        extra: list[Key] = []
        while pos < len(tokens) and tokens[pos][0] in ("string", "number"):
            extra.append(_literal_key(*tokens[pos]))
            pos += 1
        if not extra:
            raise ValueError("'index' needs at least one key (a quoted string or an integer)")
        keys = (*keys, *extra)
    else:
        raise ValueError(_describe_unexpected(kind, text))

    filters: list[str] = []
    while pos < len(tokens):
        kind, text = tokens[pos]
        if kind != "pipe":
            if kind == "other" and text == "(":
                raise ValueError("function calls are not allowed")
            if kind == "path":
                raise ValueError(f"only one path per expression ({text!r} is extra)")
            raise ValueError(_describe_unexpected(kind, text))
        if pos + 1 >= len(tokens):
            raise ValueError("a pipe needs a filter name after it")
        kind, name = tokens[pos + 1]
        if kind != "word" or name not in FILTERS:
            raise ValueError(f"filter {name!r} is not allowed")
        if pos + 2 < len(tokens) and tokens[pos + 2] == ("other", "("):
            raise ValueError(f"filter arguments are not allowed ({name!r} takes none)")
        filters.append(name)
        pos += 2
    return keys, tuple(filters)


def _jinja_literal(key: Key) -> str:
    """A Jinja literal for ``key``; every non-alphanumeric character is escaped as ``\\U`` and eight hex digits."""
    if isinstance(key, int):
        return str(key)
    escaped = "".join(c if c.isascii() and c.isalnum() else f"\\U{ord(c):08x}" for c in key)
    return f'"{escaped}"'


def _jinja_source(expr: _Expr) -> str:
    source = "ctx" + "".join(f"[{_jinja_literal(key)}]" for key in expr.keys)
    return source + "".join(f"|{name}" for name in expr.filters)


def _check_size(template: str) -> None:
    """Refuse a template longer than :data:`MAX_TEMPLATE_CHARS` or with more than :data:`MAX_EXPRESSIONS`
    blocks, before any parsing."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"template is {len(template)} characters, more than {MAX_TEMPLATE_CHARS}",
            template=template[:_MAX_QUOTED_TEMPLATE],
        )
    blocks = template.count("{{")
    if blocks > MAX_EXPRESSIONS:
        raise TemplateError(
            f"template has {blocks} '{{{{' blocks, more than {MAX_EXPRESSIONS}",
            template=template[:_MAX_QUOTED_TEMPLATE],
        )


def _compile(template: str) -> _Compiled:
    """Split ``template`` into literal text and expressions and compile them (cached, size checked first)."""
    _check_size(template)
    return _compile_cached(template)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile_cached(template: str) -> _Compiled:
    literals: list[str] = []
    exprs: list[_Expr] = []
    raw_literals: list[str] = []
    pos = 0
    trim_next = False
    while True:
        start = template.find("{{", pos)
        literal = template[pos:] if start < 0 else template[pos:start]
        raw_literals.append(literal)
        if trim_next:
            literal = literal.lstrip()
        if start < 0:
            literals.append(literal)
            break
        end = _find_block_end(template, start)
        if end < 0:
            raise TemplateError(
                f"unclosed '{{{{' at offset {start} in template {_quote(template, start, start + 2)}",
                template=template,
            )
        content = template[start + 2 : end]
        if len(content) >= 2 and content[0] == "-" and content[1].isspace():
            literal = literal.rstrip()
            content = content[1:]
        trim_next = len(content) >= 2 and content[-1] == "-" and content[-2].isspace()
        if trim_next:
            content = content[:-1]
        literals.append(literal)
        try:
            keys, filters = _parse_expression(content)
        except ValueError as exc:
            raise _syntax_error(str(exc), template, start, end + 2) from None
        exprs.append(_Expr(source=template[start : end + 2], keys=keys, filters=filters))
        pos = end + 2

    programs: list[TemplateExpression] = []
    for first in range(0, len(exprs), _PROGRAM_CHUNK):
        chunk = exprs[first : first + _PROGRAM_CHUNK]
        source = "(" + "".join(_jinja_source(expr) + ", " for expr in chunk) + ")"
        try:
            programs.append(_ENV.compile_expression(source, undefined_to_none=False))
        except JinjaTemplateError as exc:  # pragma: no cover - the parser only emits valid Jinja
            raise TemplateError(f"cannot compile template {_quote(template)}: {exc}", template=template) from None
    single = len(exprs) == 1 and not any(text.strip() for text in raw_literals)
    return _Compiled(
        template=template,
        literals=tuple(literals),
        exprs=tuple(exprs),
        single=single,
        programs=tuple(programs),
    )


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def _why_missing(obj: Any, key: Key, where: str) -> str:
    if isinstance(obj, Mapping):
        message = f"{where!r} has no key {str(key)!r}"
        available = [str(k) for k in obj]
        if not available:
            return f"{message} (it is empty)"
        if len(available) <= _MAX_LISTED_KEYS:
            return f"{message} (available: {', '.join(repr(k) for k in available)})"
        return f"{message} ({len(available)} keys)"
    if isinstance(obj, list | tuple):
        if isinstance(key, int) or _is_index(key):
            return f"{where!r} has {len(obj)} item(s), no index {key}"
        return f"{where!r} is a list and {key!r} is not an index"
    if obj is None:
        return f"{where!r} is null, it has no key {str(key)!r}"
    return f"{where!r} is a {_type_name(obj)}, it has no key {str(key)!r}"


def _missing_error(compiled: _Compiled, expr: _Expr, context: Mapping[str, Any]) -> TemplateError:
    obj: Any = context
    reason = ""
    for i, key in enumerate(expr.keys):
        value = _lookup(obj, key)
        if value is _MISSING:
            reason = ": " + _why_missing(obj, key, _display(expr.keys[:i]))
            break
        obj = value
    return TemplateError(
        f"missing variable {expr.display!r} in template {_quote(compiled.template)}{reason}",
        template=compiled.template,
        variable=expr.display,
    )


def _run(compiled: _Compiled, context: Mapping[str, Any]) -> tuple[Any, ...]:
    """Evaluate every expression of ``compiled`` against ``context``."""
    if not compiled.programs:
        return ()
    try:
        values: tuple[Any, ...] = tuple(
            value for program in compiled.programs for value in (program(ctx=context) or ())
        )
    except _FilterError as exc:
        raise TemplateError(f"{exc} in template {_quote(compiled.template)}", template=compiled.template) from None
    except JinjaTemplateError as exc:
        # StrictUndefined raising part-way (e.g. a filter formatting a missing value): find which one.
        for expr in compiled.exprs:
            if _lookup_path(context, expr.keys) is _MISSING:
                raise _missing_error(compiled, expr, context) from None
        raise TemplateError(
            f"cannot render template {_quote(compiled.template)}: {exc}", template=compiled.template
        ) from None
    for value, expr in zip(values, compiled.exprs, strict=True):
        if isinstance(value, Undefined):
            raise _missing_error(compiled, expr, context)
    return values


def _lookup_path(context: Mapping[str, Any], keys: tuple[Key, ...]) -> Any:
    obj: Any = context
    for key in keys:
        obj = _lookup(obj, key)
        if obj is _MISSING:
            break
    return obj


def _join(compiled: _Compiled, values: tuple[Any, ...], formatter: Callable[[Any], str] | None) -> str:
    fmt = formatter or format_value
    literals = compiled.literals
    parts = [literals[0]]
    for value, literal in zip(values, literals[1:], strict=True):
        parts.append(value if isinstance(value, str) else fmt(value))
        parts.append(literal)
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def has_template(text: str) -> bool:
    """Tell whether ``text`` contains template syntax.

    Args:
        text: Any string.

    Returns:
        True if ``text`` contains ``{{``.
    """
    return isinstance(text, str) and "{{" in text


def validate(template: str) -> None:
    """Check a template's syntax without a context (e.g. when a configuration is loaded).

    Args:
        template: The template text.

    Raises:
        TemplateError: The template is malformed or uses something outside the allowed subset.
    """
    if has_template(template):
        _compile(template)


def render(
    template: str,
    context: Mapping[str, Any],
    *,
    formatter: Callable[[Any], str] | None = None,
) -> str:
    """Render a template to a string.

    Args:
        template: The template text, e.g. ``"conv:{{.user_id}}:{{.session_id}}"``.
        context: The values the paths are looked up in.
        formatter: Formats every non-string value (default :func:`format_value`: ``None`` -> ``""``,
            bools as ``true``/``false``, maps and lists as compact JSON). Strings are inserted as is.

    Returns:
        The rendered text.

    Raises:
        TemplateError: The template is invalid or names a missing variable.
    """
    if "{{" not in template:
        return template
    compiled = _compile(template)
    return _join(compiled, _run(compiled, context), formatter)


def _unusable_key_part(value: Any) -> str | None:
    """Why ``value`` cannot be part of a memory key (None, empty, NaN/infinite), or None when it can."""
    if value is None:
        return "null (None)"
    if isinstance(value, str) and not value.strip():
        return "empty" if not value else "blank"
    if isinstance(value, float) and not math.isfinite(value):
        return f"not a finite number ({value})"
    return None


def render_key(template: str, context: Mapping[str, Any], field: str = "key_template") -> str:
    """Render a memory key template: the one function every shell (Python API, workflows, HTTP, magics)
    renders keys with.

    Unlike :func:`render`, a variable that is ``None``, empty, blank or a NaN/infinite number is an error
    (``chat:{{.user}}`` with ``user=None`` would otherwise give ``chat:``, the same key as ``user=""``, and
    merge two users' memories). Integers and other numbers are rendered as text (``user=7`` -> ``chat:7``).

    Args:
        template: The key template, e.g. ``"conv:{{.user_id}}:{{.session_id}}"``; text without ``{{`` is
            returned as is.
        context: The values the paths are looked up in.
        field: The name of the template in error messages (``key_template``, ``memory[0].key``, ``key``).

    Returns:
        The rendered key (not yet checked against the key rules; see ``memory.keys.validate_key``).

    Raises:
        TemplateError: The template is invalid, or a variable is missing, None, empty, blank or NaN; the
            message names the variable (also in the error's ``variable`` context).
    """
    if "{{" not in template:
        return template
    try:
        compiled = _compile(template)
        values = _run(compiled, context)
    except TemplateError as exc:
        raise TemplateError(f"{field}: {exc.message}", field=field) from None
    for value, expr in zip(values, compiled.exprs, strict=True):
        problem = _unusable_key_part(value)
        if problem is not None:
            raise TemplateError(
                f"{field}: variable {expr.display!r} is {problem} in key template {_quote(template)}; every "
                "variable of a memory key needs a value, or different users would share one key",
                variable=expr.display,
                field=field,
            )
    return _join(compiled, values, None)


def evaluate(template: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a template, keeping the value's type when it is a single expression.

    Args:
        template: The template text.
        context: The values the paths are looked up in.

    Returns:
        If ``template`` (ignoring surrounding whitespace) is exactly one ``{{ }}`` block, the value
        itself (a list stays a list, an int an int); otherwise :func:`render`'s string.

    Raises:
        TemplateError: The template is invalid or names a missing variable.
    """
    if "{{" not in template:
        return template
    compiled = _compile(template)
    values = _run(compiled, context)
    if compiled.single:
        return values[0]
    return _join(compiled, values, None)


def render_value(
    value: Any,
    context: Mapping[str, Any],
    *,
    keep_types: bool = True,
    where: str = "",
) -> Any:
    """Render every string leaf of a nested structure of dicts and lists.

    Args:
        value: A string, a mapping, a list/tuple, or any other value (returned unchanged).
        context: The values the paths are looked up in.
        keep_types: Use :func:`evaluate` for leaves (a lone ``{{ .messages }}`` stays a list)
            instead of :func:`render` (always a string).
        where: Name of ``value`` used as the prefix of leaf paths in error messages, e.g.
            ``"payload"`` gives ``payload[1].content``.

    Returns:
        A copy with mappings as dicts, lists and tuples preserved, string leaves rendered.

    Raises:
        TemplateError: A leaf failed; the message starts with the leaf's path.
    """
    if isinstance(value, str):
        if "{{" not in value:
            return value
        try:
            return evaluate(value, context) if keep_types else render(value, context)
        except TemplateError as exc:
            if not where:
                raise
            raise TemplateError(f"{where}: {exc.message}", **{**exc.context, "field": where}) from None
    if isinstance(value, Mapping):
        return {
            key: render_value(item, context, keep_types=keep_types, where=f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        rendered = [
            render_value(item, context, keep_types=keep_types, where=f"{where}[{i}]") for i, item in enumerate(value)
        ]
        return tuple(rendered) if isinstance(value, tuple) else rendered
    return value


def referenced_paths(template: str) -> list[tuple[str, ...]]:
    """List the context paths a template reads, for static checks of workflows.

    Args:
        template: The template text.

    Returns:
        Each distinct path once, in order of appearance, as a tuple of keys, e.g.
        ``[("workflow", "input", "user_id")]``. Integer ``index`` keys are given as strings; the whole
        context (``{{ . }}``) is not listed.

    Raises:
        TemplateError: The template is invalid.
    """
    if not has_template(template):
        return []
    paths: list[tuple[str, ...]] = []
    for expr in _compile(template).exprs:
        path = tuple(str(key) for key in expr.keys)
        if path and path not in paths:
            paths.append(path)
    return paths
