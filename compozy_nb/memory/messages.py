"""Payloads turned into messages, and messages encoded the way they are stored.

A stored message is one JSON object. Compozy reads ``role`` and ``content``; we add ``tokens``, ``id`` and
``ts`` and keep any extra field of the payload (``timestamp``, ``metadata`` ...). ``tokens``, ``id`` and
``role`` come first so the Lua scripts can read them without decoding the whole object.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compozy_nb.errors import CorruptDataError, InvalidPayloadError, LimitExceededError
from compozy_nb.limits import check_depth
from compozy_nb.memory import transcript
from compozy_nb.memory.transcript import check_finite
from compozy_nb.tokens import TokenCounter

ROLES = transcript.ROLES
_COMPUTED = ("tokens", "ts")
_MAX_ID = 128


@dataclass(frozen=True)
class Encoded:
    """A message ready for the append script (``raw``: its stored element, UTF-8)."""

    raw: bytes
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


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_RAW_DECODE = json.JSONDecoder().raw_decode


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``, twice as fast on what we store (compact UTF-8 objects): ``json.loads`` on bytes
    first sniffs the encoding and strips whitespace around the value. Anything else (another encoding, a BOM,
    whitespace, invalid JSON) takes ``json.loads`` itself, so the result and the errors are exactly its own."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value, end = _RAW_DECODE(text)
        if end == len(text):
            return value
    except ValueError:  # UnicodeDecodeError and JSONDecodeError: json.loads decides (and raises)
        pass
    return json.loads(raw)


def new_id() -> str:
    """A fresh random message id (128 bits, hex)."""
    return os.urandom(16).hex()


def new_op_id() -> str:
    """A fresh operation id for the retry record of a write (64 random bits, hex): it only has to differ from the
    ~10 other calls recorded with it, and every byte of it is read and rewritten by each write of the memory."""
    return os.urandom(8).hex()


def normalize_payload(payload: Any, *, operation: str) -> list[dict[str, Any]]:
    """Turn a payload (message map, list of maps, string or DataFrame) into message dicts.

    Roles default to ``user``; extra fields are kept. ``tokens`` and ``ts`` given in a payload are ignored
    (they are computed). Messages follow the OpenAI chat shapes (see :mod:`compozy_nb.memory.transcript`);
    Anthropic content blocks are converted to them.

    Raises:
        InvalidPayloadError: naming the element and the rule it breaks.
    """
    if payload is None:
        raise InvalidPayloadError(f"{operation} operation requires payload", operation=operation)
    if type(payload) is dict and _plain(payload, payload.get("content")):  # the usual call: one {role, content}
        return [{"role": payload["role"], "content": payload["content"]}]
    nested = isinstance(payload, Mapping | list | tuple)  # what the caller built: its depth is unchecked
    if isinstance(payload, str):
        items: list[Any] = [{"role": "user", "content": payload}]
    elif isinstance(payload, Mapping):
        items = [payload]
    elif isinstance(payload, list | tuple):
        items = list(payload)
    elif _is_dataframe(payload):
        from compozy_nb.memory.frames import frame_messages

        items = frame_messages(payload)
    else:
        raise InvalidPayloadError(
            f"unsupported payload format {type(payload).__name__}: give a message map, a list of maps, a string "
            "or a DataFrame",
            operation=operation,
        )
    # the common {role, content} message, decided once per item: it nests one level, so only a payload with
    # other items is walked for its depth
    plain = [isinstance(item, Mapping) and _plain(item, item.get("content")) for item in items]
    if nested and not all(plain):
        check_depth(payload)
    indexed = not isinstance(payload, str | Mapping)
    messages: list[dict[str, Any]] = []
    for index, (item, is_plain) in enumerate(zip(items, plain, strict=True)):
        if is_plain:
            messages.append({"role": item["role"], "content": item["content"]})
        else:
            messages.extend(_message(item, index if indexed else None, operation))
    return messages


def _is_dataframe(value: Any) -> bool:
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    return pandas is not None and isinstance(value, pandas.DataFrame)


def _message(item: Any, index: int | None, operation: str) -> list[dict[str, Any]]:
    where = f"payload[{index}]" if index is not None else "payload"
    if not isinstance(item, Mapping):
        raise InvalidPayloadError(
            f"{where}: invalid message format, expected a map with role and content, got {type(item).__name__}",
            operation=operation,
            field=where,
        )
    check_finite(item, where, operation)
    messages = transcript.normalize_message({k: v for k, v in item.items() if k not in _COMPUTED}, where, operation)
    for message in messages:
        if "id" in message:
            message["id"] = _checked_id(message["id"], where, operation)
    return messages


def _plain(item: Mapping[str, Any], content: Any) -> bool:
    return (
        len(item) <= 2
        and "role" in item
        and item["role"] in transcript.ROLES
        and isinstance(content, str)
        and bool(content.strip())
        and transcript.encodable(content)
    )


def _checked_id(mid: Any, where: str, operation: str) -> str:
    if not isinstance(mid, str | int) or isinstance(mid, bool) or not str(mid) or len(str(mid)) > _MAX_ID:
        raise InvalidPayloadError(
            f"{where}.id: a message id must be a non-empty string of at most {_MAX_ID} characters",
            operation=operation,
            field=f"{where}.id",
        )
    return str(mid)


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
    content, structured = transcript.to_stored(message)
    text = transcript.tokenized_size(message, content)
    if text > max_bytes:  # before counting: tokenizing megabytes takes seconds
        raise LimitExceededError(
            f"message {index} is larger than max_message_bytes ({max_bytes}): its content alone is {text} characters",
            operation=operation,
        )
    if len(message) == 2 and not structured:  # the common {role, content} message
        tokens = counter.count_message(role, content)
    else:
        tokens = transcript.count_tokens(counter, message)
    given = message.get("id")
    mid = str(given) if given else new_id()
    stored: dict[str, Any] = {"tokens": tokens, "id": mid, "role": role, "content": content, "ts": now}
    for name, value in message.items():
        if name not in stored:
            stored[name] = value
    stored.update(structured)
    try:
        raw = _JSON.encode(stored).encode("utf-8")  # here once, not by redis-py on every send of it
        size = len(raw)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError: a lone surrogate elsewhere
        reason = "NaN or Infinity" if isinstance(exc, ValueError) and "float" in str(exc) else type(exc).__name__
        raise InvalidPayloadError(
            f"message {index}: not JSON-serialisable ({reason})", operation=operation, field=f"payload[{index}]"
        ) from None
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
        value = loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or "content" not in value:
        raise CorruptDataError(
            f"memory {key!r}: element at position {position} is not a stored message "
            f"({len(raw)} bytes that are not a JSON object with a content field)",
            key=key,
            position=position,
        )
    value.setdefault("role", "user")
    return transcript.from_stored(value)


def stored_text(message: Mapping[str, Any]) -> str:
    """The text of a decoded message, whatever its content shape (what Compozy reads as its content)."""
    return transcript.text_projection(message.get("content"))


def count_decoded(counter: TokenCounter, message: Mapping[str, Any]) -> int:
    """Tokens of a decoded message: its recorded count, else counted by the rule of :func:`encode`."""
    recorded = message.get("tokens")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0:
        return recorded
    fields = {k: v for k, v in message.items() if k not in ("tokens", "id", "ts")}
    return transcript.count_tokens(counter, fields)


def canonical(raw: bytes | str, counter: TokenCounter, *, key: str, position: int) -> tuple[str, int, str, str]:
    """One element of a list written by another tool, in our layout: (raw, tokens, id, role).

    Messages keep their role, content (and its structured form) and every other field; an element that is
    not a message is kept as it is (0 tokens, role ``unknown``).
    """
    try:
        message = decode(raw, key=key, position=position)
    except CorruptDataError:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return text, 0, new_id(), "unknown"
    role = str(message.get("role", "user"))
    fields = {k: v for k, v in message.items() if k not in ("tokens", "id")}
    if not isinstance(fields.get("content"), str | list | None):
        fields["content"] = str(fields["content"])
    tokens = transcript.count_tokens(counter, fields)
    mid = str(message.get("id") or new_id())
    content, structured = transcript.to_stored(fields)
    stored: dict[str, Any] = {"tokens": tokens, "id": mid, "role": role, "content": content}
    stored.update({k: v for k, v in fields.items() if k not in stored})
    stored.update(structured)
    try:
        return _JSON.encode(stored), tokens, mid, role
    except ValueError:  # NaN written by another tool: keep the element as it is
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return text, 0, mid, role
