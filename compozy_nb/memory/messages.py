"""Payloads turned into messages, and messages encoded the way they are stored.

A stored message is one JSON object. Compozy reads ``role`` and ``content``; we add ``tokens``, ``id`` and
``ts`` and keep any extra field of the payload (``timestamp``, ``metadata`` ...). ``tokens``, ``id`` and
``role`` come first so the Lua scripts can read them without decoding the whole object.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compozy_nb.errors import CorruptDataError, InvalidPayloadError, LimitExceededError
from compozy_nb.tokens import TokenCounter

ROLES = ("user", "assistant", "system", "tool")
_COMPUTED = ("tokens", "ts")
_MAX_ID = 128


@dataclass(frozen=True)
class Encoded:
    """A message ready for the append script."""

    raw: str
    tokens: int
    id: str
    role: str
    explicit: bool = False


_second: list[Any] = [-1, ""]


def utc_now_iso() -> str:
    """Now, as ISO-8601 UTC with milliseconds and a ``Z`` (the date part is formatted once a second)."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def new_id() -> str:
    """A fresh random message id (128 bits, hex)."""
    return os.urandom(16).hex()


def normalize_payload(payload: Any, *, operation: str) -> list[dict[str, Any]]:
    """Turn a payload (message map, list of maps, or string) into message dicts.

    Roles default to ``user``; extra fields are kept. ``tokens`` and ``ts`` given in a payload are ignored
    (they are computed).

    Raises:
        InvalidPayloadError: naming the element and the rule it breaks.
    """
    if payload is None:
        raise InvalidPayloadError(f"{operation} operation requires payload", operation=operation)
    if isinstance(payload, str):
        items: list[Any] = [{"role": "user", "content": payload}]
    elif isinstance(payload, Mapping):
        items = [payload]
    elif isinstance(payload, list | tuple):
        items = list(payload)
    else:
        raise InvalidPayloadError(
            f"unsupported payload format {type(payload).__name__}: give a message map, a list of maps or a string",
            operation=operation,
        )
    indexed = isinstance(payload, list | tuple)
    return [_message(item, index if indexed else None, operation) for index, item in enumerate(items)]


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _message(item: Any, index: int | None, operation: str) -> dict[str, Any]:
    where = f"payload[{index}]" if index is not None else "payload"
    if not isinstance(item, Mapping):
        raise InvalidPayloadError(
            f"{where}: invalid message format, expected a map with role and content, got {type(item).__name__}",
            operation=operation,
            field=where,
        )
    role = item.get("role", "user")
    if role not in ROLES:
        raise InvalidPayloadError(
            f"{where}.role: invalid message role {role!r}, must be one of: {', '.join(ROLES)}",
            operation=operation,
            field=f"{where}.role",
        )
    content = item.get("content")
    if isinstance(content, str) and not _encodable(content):
        raise InvalidPayloadError(
            f"{where}.content: message content is not valid Unicode text (a lone surrogate?)",
            operation=operation,
            field=f"{where}.content",
        )
    if not isinstance(content, str) or not content.strip():
        got = "missing" if content is None else f"{type(content).__name__} {content!r}"[:60]
        raise InvalidPayloadError(
            f"{where}.content: message content is required and must be a non-empty string ({got})",
            operation=operation,
            field=f"{where}.content",
        )
    if len(item) <= 2 and "role" in item:  # the common {role, content} payload
        return {"role": role, "content": content}
    message = {k: v for k, v in item.items() if k not in _COMPUTED}
    message["role"] = role
    if "id" in message:
        mid = message["id"]
        if not isinstance(mid, str | int) or isinstance(mid, bool) or not str(mid) or len(str(mid)) > _MAX_ID:
            raise InvalidPayloadError(
                f"{where}.id: a message id must be a non-empty string of at most {_MAX_ID} characters",
                operation=operation,
                field=f"{where}.id",
            )
        message["id"] = str(mid)
    return message


def encode(
    message: Mapping[str, Any],
    counter: TokenCounter,
    *,
    now: str,
    max_bytes: int,
    max_tokens: int | None,
    operation: str,
    index: int = 0,
) -> Encoded:
    """Count tokens, assign id and write time, and serialise one message in the stored layout.

    Raises:
        LimitExceededError: the message alone exceeds ``max_message_bytes`` or the token limit.
    """
    role = str(message["role"])
    content = str(message["content"])
    if len(content) > max_bytes:  # before counting: tokenizing megabytes takes seconds
        raise LimitExceededError(
            f"message {index} is larger than max_message_bytes ({max_bytes}): its content alone is "
            f"{len(content)} characters",
            operation=operation,
        )
    tokens = counter.count_message(role, content)
    given = message.get("id")
    mid = str(given) if given else new_id()
    stored: dict[str, Any] = {"tokens": tokens, "id": mid, "role": role, "content": content, "ts": now}
    for name, value in message.items():
        if name not in stored:
            stored[name] = value
    try:
        raw = _JSON.encode(stored)
        size = len(raw) if raw.isascii() else len(raw.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError: a lone surrogate elsewhere
        raise InvalidPayloadError(f"message {index}: not JSON-serialisable: {exc}", operation=operation) from None
    if size > max_bytes:
        raise LimitExceededError(
            f"message {index} is {size} bytes, larger than max_message_bytes ({max_bytes})",
            operation=operation,
        )
    if max_tokens is not None and tokens > max_tokens:
        raise LimitExceededError(
            f"message {index} has {tokens} tokens, more than the memory's token limit ({max_tokens})",
            operation=operation,
        )
    return Encoded(raw, tokens, mid, role, bool(given))


def decode(raw: bytes | str, *, key: str, position: int) -> dict[str, Any]:
    """Decode one stored element.

    Raises:
        CorruptDataError: the element is not a JSON object with role and content.
    """
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or "content" not in value:
        preview = raw[:60] if isinstance(raw, str) else raw[:60].decode("utf-8", "replace")
        raise CorruptDataError(
            f"memory {key!r}: element at position {position} is not a stored message ({preview!r})",
            key=key,
            position=position,
        )
    value.setdefault("role", "user")
    return value
