"""The message model of agent transcripts: OpenAI chat message shapes (and Anthropic blocks, converted).

A message is what an OpenAI-compatible chat API takes: ``role`` (``system``, ``developer``, ``user``,
``assistant``, ``tool``), ``content`` (a string, ``None`` for an assistant message that only calls tools, or a
list of content parts), and the optional ``name``, ``tool_calls`` (assistant), ``tool_call_id`` (tool) and
``refusal`` (assistant). Any other field (``metadata``, ``timestamp`` ...) is kept as given.

Stored, ``content`` is always a string - the *text projection* (:func:`text_projection`) - so Compozy's
``{Role, Content string}`` decoder reads every element; the structured form lives in ``content_parts`` (a
list of parts) or ``content_null`` (``true`` when the content was ``None``). :func:`to_stored` and
:func:`from_stored` convert between the two.

Tool-call groups (:func:`group_starts`) are positional: a message and the run of ``tool`` messages right after
it. Reads that keep the newest messages, eviction and flushes take or drop a group whole.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from compozy_nb.errors import InvalidPayloadError
from compozy_nb.tokens import TokenCounter

ROLES = ("user", "assistant", "system", "tool", "developer")
"""Accepted roles: OpenAI's five (Compozy's four plus ``developer``)."""

PARTS_FIELD = "content_parts"
NULL_FIELD = "content_null"
RESERVED = frozenset({PARTS_FIELD, NULL_FIELD})
"""Stored field names that carry the structured content: not accepted as extra fields of a payload."""

PART_TOKENS = {"image_url": 85, "input_audio": 85, "file": 85}
"""Fixed token cost of a non-text part (OpenAI's cost of a low-detail image, used for audio and files too)."""

_PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
_ANTHROPIC_ONLY = frozenset({"tool_use", "tool_result", "image"})
_BINARY_FIELDS = {"image_url": "url", "input_audio": "data", "file": "file_data"}


def _fail(message: str, field: str, operation: str) -> InvalidPayloadError:
    return InvalidPayloadError(f"{field}: {message}", operation=operation, field=field)


# ---------------------------------------------------------------------------------------------- validation


def normalize_message(item: Mapping[str, Any], where: str, operation: str) -> list[dict[str, Any]]:
    """Validate one payload message; Anthropic blocks become OpenAI messages (possibly several).

    Args:
        item: The message as given (``role`` already defaulted by the caller or not).
        where: How errors name it, e.g. ``payload[2]``.
        operation: The operation, for the error.

    Returns:
        The message(s) in OpenAI shape, extra fields kept, ``tokens``/``ts`` dropped by the caller.

    Raises:
        InvalidPayloadError: naming the field and the message index.
    """
    content = item.get("content")
    if isinstance(content, list) and any(_part_type(part) in _ANTHROPIC_ONLY for part in content):
        converted = from_anthropic(item, where, operation)
        return [_validated(message, where, operation) for message in converted]
    return [_validated(dict(item), where, operation)]


def _part_type(part: Any) -> Any:
    return part.get("type") if isinstance(part, Mapping) else None


def _validated(message: dict[str, Any], where: str, operation: str) -> dict[str, Any]:
    role = message.get("role", "user")
    if role not in ROLES:
        raise _fail(
            f"invalid message role {_shown(role)}, must be one of: {', '.join(ROLES)}", f"{where}.role", operation
        )
    message["role"] = role
    _check_field_names(message, where, operation)
    _check_content(message, where, operation)
    _check_tool_fields(message, where, operation)
    for name in ("name", "refusal"):
        value = message.get(name)
        if name in message and not (isinstance(value, str) or (name == "refusal" and value is None)):
            raise _fail(f"must be a string, got {type(value).__name__}", f"{where}.{name}", operation)
    if "refusal" in message and role != "assistant":
        raise _fail("only an assistant message has a refusal", f"{where}.refusal", operation)
    return message


def _shown(value: Any) -> str:
    """A payload value safe to echo in an error: a short word, else only its type (never content)."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", value):
        return repr(value)
    return f"(a {type(value).__name__})"


def _key_label(key: Any) -> str:
    """A mapping key as errors show it: a plain name, else ``<key>`` (a key may be personal data)."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", text) else "<key>"


def _check_field_names(message: Mapping[str, Any], where: str, operation: str) -> None:
    """Compozy's decoder matches names case-insensitively (last wins): ``Content``/``ROLE`` would shadow ours."""
    for name in message:
        if not isinstance(name, str):
            raise _fail("field names must be strings", where, operation)
        if name.lower() in ("role", "content") and name not in ("role", "content"):
            raise _fail(
                "a field whose name is role or content in another letter case is refused: Compozy's decoder "
                "would read it instead of the message's own (rename it)",
                f"{where}.{name}",
                operation,
            )
        if name in RESERVED:
            raise _fail(
                "this field name is reserved for the stored form of structured content", f"{where}.{name}", operation
            )


def _check_content(message: Mapping[str, Any], where: str, operation: str) -> None:
    role, content = message["role"], message.get("content")
    field = f"{where}.content"
    calls_tools = bool(message.get("tool_calls")) or message.get("refusal") is not None
    if content is None:
        if role == "assistant" and calls_tools:
            return
        raise _fail(
            "message content is required (null only for an assistant message with tool_calls or a refusal)",
            field,
            operation,
        )
    if isinstance(content, str):
        if not encodable(content):
            raise _fail("message content is not valid Unicode text (a lone surrogate?)", field, operation)
        may_be_empty = (role == "assistant" and calls_tools) or (role == "tool" and "tool_call_id" in message)
        if not content.strip() and not may_be_empty:
            raise _fail("message content is required and must be a non-empty string", field, operation)
        return
    if not isinstance(content, list) or not content:
        raise _fail(
            f"content must be a string, null or a non-empty list of parts, got {type(content).__name__}",
            field,
            operation,
        )
    for index, part in enumerate(content):
        _check_part(part, role, f"{field}[{index}]", operation)


def encodable(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_part(part: Any, role: str, field: str, operation: str) -> None:
    if not isinstance(part, Mapping):
        raise _fail(f"a content part must be a map with a type, got {type(part).__name__}", field, operation)
    kind = part.get("type")
    allowed = _PART_TYPES[role]
    if kind not in allowed:
        raise _fail(f"a {role} message takes parts of type {', '.join(allowed)}", f"{field}.type", operation)
    if kind in ("text", "refusal"):
        _require_str(part, kind, f"{field}.{kind}", operation)
        return
    body = part.get(kind)
    if not isinstance(body, Mapping):
        raise _fail(f"must be a map, got {type(body).__name__}", f"{field}.{kind}", operation)
    if kind == "image_url":
        _require_str(body, "url", f"{field}.image_url.url", operation)
    elif kind == "input_audio":
        _require_str(body, "data", f"{field}.input_audio.data", operation)
        _require_str(body, "format", f"{field}.input_audio.format", operation)
    elif not any(isinstance(body.get(name), str) and body.get(name) for name in ("file_data", "file_id")):
        raise _fail("a file part needs file_data or file_id", f"{field}.file", operation)


def _require_str(body: Mapping[str, Any], name: str, field: str, operation: str) -> None:
    value = body.get(name)
    if not isinstance(value, str):
        raise _fail(f"required string, got {type(value).__name__}", field, operation)
    if not encodable(value):
        raise _fail("not valid Unicode text (a lone surrogate?)", field, operation)


def _check_tool_fields(message: Mapping[str, Any], where: str, operation: str) -> None:
    role = message["role"]
    if "tool_call_id" in message:
        if role != "tool":
            raise _fail("only a tool message has a tool_call_id", f"{where}.tool_call_id", operation)
        value = message["tool_call_id"]
        if not isinstance(value, str) or not value:
            raise _fail("must be a non-empty string", f"{where}.tool_call_id", operation)
    if "tool_calls" not in message:
        return
    calls = message["tool_calls"]
    field = f"{where}.tool_calls"
    if role != "assistant":
        raise _fail("only an assistant message has tool_calls", field, operation)
    if not isinstance(calls, list) or not calls:
        raise _fail("must be a non-empty list of tool calls", field, operation)
    for index, call in enumerate(calls):
        _check_tool_call(call, f"{field}[{index}]", operation)


def _check_tool_call(call: Any, field: str, operation: str) -> None:
    if not isinstance(call, Mapping):
        raise _fail(f"a tool call must be a map, got {type(call).__name__}", field, operation)
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise _fail("must be a non-empty string", f"{field}.id", operation)
    if call.get("type", "function") != "function":
        raise _fail("the only tool call type is function", f"{field}.type", operation)
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise _fail("must be a map with name and arguments", f"{field}.function", operation)
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise _fail("must be a non-empty string", f"{field}.function.name", operation)
    if not isinstance(function.get("arguments"), str):
        raise _fail(
            "must be a JSON string (json.dumps the arguments), as the OpenAI API gives it",
            f"{field}.function.arguments",
            operation,
        )


def check_finite(value: Any, where: str, operation: str) -> None:
    """Refuse ``NaN``/``Infinity`` anywhere in a value: Compozy and strict JSON clients cannot read them.

    Raises:
        InvalidPayloadError: naming the path of the first one.
    """
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        current, path = stack.pop()
        if isinstance(current, float) and not math.isfinite(current):
            raise _fail("NaN and Infinity are not valid JSON numbers", path, operation)
        if isinstance(current, Mapping):
            stack.extend((item, f"{path}.{_key_label(key)}") for key, item in current.items())
        elif isinstance(current, list | tuple):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(current))


# ---------------------------------------------------------------------------------------------- Anthropic


def from_anthropic(item: Mapping[str, Any], where: str, operation: str) -> list[dict[str, Any]]:
    """Convert a message with Anthropic content blocks to OpenAI messages.

    ``tool_use`` blocks of an assistant message become its ``tool_calls`` (``input`` JSON-encoded as
    ``arguments``) and its text blocks its ``content`` string (``None`` without text); each ``tool_result``
    block of a user message becomes one ``tool`` message (its text as ``content``, ``is_error`` dropped), the
    remaining blocks one user message after them; an ``image`` block becomes an ``image_url`` part (base64
    sources as ``data:`` URLs). Extra fields are kept on every message; a given ``id`` stays on the first,
    the others get ``<id>:1``, ``<id>:2`` ...
    """
    role = item.get("role", "user")
    extras = {k: v for k, v in item.items() if k not in ("role", "content", "id")}
    blocks: list[Any] = item["content"]
    if role == "assistant":
        messages = [_anthropic_assistant(blocks, extras, where, operation)]
    elif role == "user":
        messages = _anthropic_user(blocks, extras, where, operation)
    else:
        raise _fail(
            "tool_use, tool_result and image blocks belong to assistant or user messages", f"{where}.role", operation
        )
    if "id" in item:
        for index, message in enumerate(messages):
            message["id"] = item["id"] if index == 0 else f"{item['id']}:{index}"
    return messages


def _anthropic_assistant(blocks: list[Any], extras: dict[str, Any], where: str, operation: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        field = f"{where}.content[{index}]"
        kind = _part_type(block)
        if kind == "text":
            _require_str(block, "text", f"{field}.text", operation)
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(_tool_use(block, field, operation))
        else:
            raise _fail("an assistant message takes text and tool_use blocks", f"{field}.type", operation)
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return {**message, **extras}


def _tool_use(block: Mapping[str, Any], field: str, operation: str) -> dict[str, Any]:
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise _fail("must be a non-empty string", f"{field}.{name}", operation)
    try:
        arguments = json.dumps(block.get("input", {}), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise _fail("must be JSON data (no NaN/Infinity)", f"{field}.input", operation) from None
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}


def _anthropic_user(blocks: list[Any], extras: dict[str, Any], where: str, operation: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        field = f"{where}.content[{index}]"
        kind = _part_type(block)
        if kind == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": _result_id(block, field, operation),
                    "content": _result_text(block, field, operation),
                    **extras,
                }
            )
        elif kind == "image":
            parts.append(_image(block, field, operation))
        else:
            parts.append(dict(block))  # text and OpenAI parts: validated as OpenAI parts
    if parts:
        results.append({"role": "user", "content": parts, **extras})
    return results


def _result_id(block: Mapping[str, Any], field: str, operation: str) -> str:
    value = block.get("tool_use_id")
    if not isinstance(value, str) or not value:
        raise _fail("must be a non-empty string", f"{field}.tool_use_id", operation)
    return value


def _result_text(block: Mapping[str, Any], field: str, operation: str) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(_part_type(b) == "text" and isinstance(b.get("text"), str) for b in content):
        return "\n".join(b["text"] for b in content)
    raise _fail("a tool_result's content must be a string or text blocks", f"{field}.content", operation)


def _image(block: Mapping[str, Any], field: str, operation: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if isinstance(source, Mapping) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _fail("an image source is {type: base64, media_type, data} or {type: url, url}", f"{field}.source", operation)


# ---------------------------------------------------------------------------------------------- text and tokens


def text_projection(content: Any) -> str:
    """The text Compozy sees: the string itself, the text (and refusal) parts joined by newlines, or ``""``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text", part.get("refusal")) for part in content if isinstance(part, Mapping)]
        return "\n".join(text for text in texts if isinstance(text, str))
    return ""


def count_tokens(counter: TokenCounter, message: Mapping[str, Any]) -> int:
    """Tokens of one message in its given shape (see docs/features/memory-tasks.md, "Token counting").

    ``count(text projection) + count(role) + 2`` (Compozy's rule), plus ``count(name)``, ``count(refusal)``,
    for each tool call ``count(function.name) + count(function.arguments)``, and :data:`PART_TOKENS` per
    image/audio/file part.
    """
    content = message.get("content")
    tokens = counter.count_message(str(message.get("role", "user")), text_projection(content))
    for name in ("name", "refusal"):
        value = message.get(name)
        if isinstance(value, str):
            tokens += counter.count(value)
    for call in message.get("tool_calls") or ():
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        tokens += counter.count(str(function.get("name", ""))) + counter.count(str(function.get("arguments", "")))
    if isinstance(content, list):
        tokens += sum(PART_TOKENS.get(str(_part_type(part)), 0) for part in content)
    return tokens


def tokenized_size(message: Mapping[str, Any], projection: str) -> int:
    """Characters :func:`count_tokens` would tokenize (checked against the size bound before counting)."""
    size = len(projection)
    for name in ("name", "refusal"):
        value = message.get(name)
        size += len(value) if isinstance(value, str) else 0
    for call in message.get("tool_calls") or ():
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        size += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return size


# ---------------------------------------------------------------------------------------------- stored form


def to_stored(message: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The stored ``content`` string and the structured fields that go after the message's other fields."""
    content = message.get("content")
    if isinstance(content, str):
        return content, {}
    if content is None:
        return "", {NULL_FIELD: True}
    return text_projection(content), {PARTS_FIELD: content}


def from_stored(value: dict[str, Any]) -> dict[str, Any]:
    """Give a decoded stored element its content back in the shape it was written (in place)."""
    if PARTS_FIELD in value:
        value["content"] = value.pop(PARTS_FIELD)
    elif value.get(NULL_FIELD) is True:
        del value[NULL_FIELD]
        value["content"] = None
    return value


def is_binary_field(part_type: str, name: str) -> bool:
    """Whether a part field holds binary data (base64 or a ``data:`` URL): never redacted nor echoed."""
    return _BINARY_FIELDS.get(part_type) == name


# ---------------------------------------------------------------------------------------------- groups


def group_starts(roles: Sequence[str | None]) -> list[int]:
    """Positions where a tool-call group starts: every message that is not ``tool``, plus position 0.

    A group is a message and the consecutive ``tool`` messages after it; a leading run of ``tool`` messages
    (their call was removed by another tool) forms a group of its own.
    """
    return [i for i, role in enumerate(roles) if i == 0 or role != "tool"]


def leading_tool_run(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many ``tool`` messages open ``messages`` (the tail of a group that started before them)."""
    count = 0
    while count < len(messages) and messages[count].get("role") == "tool":
        count += 1
    return count


def groups(roles: Sequence[str | None]) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` (end exclusive) of each group, oldest first."""
    starts = group_starts(roles)
    for index, start in enumerate(starts):
        yield start, starts[index + 1] if index + 1 < len(starts) else len(roles)


def newest_whole_groups(
    tokens: Sequence[int], roles: Sequence[str | None], budget: int | None, last: int | None
) -> int:
    """Where the newest whole groups within ``budget`` tokens (or ``last`` messages) start (``len`` if none)."""
    start = len(roles)
    used = 0
    for group_start, group_end in reversed(list(groups(roles))):
        cost = sum(tokens[group_start:group_end]) if budget is not None else group_end - group_start
        limit = budget if budget is not None else (last or 0)
        if used + cost > limit:
            break
        used += cost
        start = group_start
    return start


# ---------------------------------------------------------------------------------------------- filters


def parse_time(value: Any, field: str, operation: str = "read") -> datetime:
    """A datetime or ISO-8601 string as an aware UTC datetime (naive means UTC).

    Raises:
        InvalidPayloadError: for anything else.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise _fail("not an ISO-8601 date/time", field, operation) from None
    if not isinstance(value, datetime):
        raise _fail(f"must be a datetime or an ISO-8601 string, got {type(value).__name__}", field, operation)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def message_time(message: Mapping[str, Any]) -> datetime | None:
    """When a message was written (its ``ts``), or None for messages written by another tool."""
    ts = message.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


class Selection:
    """Read filters: roles, and a time window on ``ts`` (``since`` inclusive, ``until`` exclusive).

    Messages without a ``ts`` (written by another tool) match only when no time bound is given.

    Raises:
        InvalidPayloadError: a role that is not a string, or a bound that is not a date/time.
    """

    def __init__(self, roles: Sequence[str] | str | None = None, since: Any = None, until: Any = None) -> None:
        if isinstance(roles, str):
            roles = [roles]
        if roles is not None and not all(isinstance(role, str) for role in roles):
            raise _fail("must be a list of role names", "roles", "read")
        self.roles = frozenset(roles) if roles is not None else None
        self.since = parse_time(since, "since") if since is not None else None
        self.until = parse_time(until, "until") if until is not None else None

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return self.roles is not None or self.since is not None or self.until is not None

    def matches(self, message: Mapping[str, Any]) -> bool:
        """Whether ``message`` passes every filter."""
        if self.roles is not None and message.get("role") not in self.roles:
            return False
        if self.since is None and self.until is None:
            return True
        written = message_time(message)
        if written is None:
            return False
        return (self.since is None or written >= self.since) and (self.until is None or written < self.until)


def page(
    messages: Sequence[dict[str, Any]],
    *,
    offset: int = 0,
    limit: int | None = None,
    last: int | None = None,
    max_tokens: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The page of ``messages`` a read returns, and the position of its first message.

    ``last`` and ``max_tokens`` keep the newest whole tool-call groups; ``offset``/``limit`` cut plainly.
    """
    if last is not None or max_tokens is not None:
        roles = [str(m.get("role")) for m in messages]
        tokens = [int(m.get("tokens") or 0) for m in messages]
        start = newest_whole_groups(tokens, roles, max_tokens, last)
        return list(messages[start:]), start
    end = None if limit is None else offset + limit
    return list(messages[offset:end]), offset
