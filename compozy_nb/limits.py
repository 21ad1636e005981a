"""Bounds on what enters compozy-nb: nesting depth, and the one helper that checks it.

Every entry point (the HTTP body, ``compozy-nb exec``/``run --input``, Python API payloads, YAML files)
refuses a value nested deeper than :data:`MAX_DEPTH` with a clear error instead of letting a recursive
function (``json``, pydantic, redaction, the templating walk) hit Python's recursion limit.

Example:
    >>> check_depth({"a": [1, {"b": 2}]}, limit=3, where="payload")
    >>> check_depth([[[[]]]], limit=3, where="payload")
    Traceback (most recent call last):
    ...
    compozy_nb.errors.InvalidPayloadError: payload: nested deeper than 3 levels (maps and lists)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compozy_nb.errors import CompozyNbError, InvalidPayloadError

__all__ = ["MAX_DEPTH", "MAX_EXACT_INT", "check_depth", "depth_error", "nesting_depth"]

MAX_EXACT_INT = 2**53 - 1
"""The largest count or limit accepted: exact in Lua numbers (memory/scripts/_common.lua's MAX_INT), Redis replies
and every JSON parser (I-JSON, RFC 7493)."""

MAX_DEPTH = 64
"""Deepest nesting of maps and lists accepted anywhere input enters (a message with metadata needs ~5)."""


_SCALARS = frozenset((str, int, float, bool, type(None), bytes))  # skipped without the slower ABC checks


def nesting_depth(value: Any, stop_after: int | None = None) -> int:
    """How deeply maps and lists nest in ``value`` (a scalar is 0, ``[]`` is 1), without recursion.

    Args:
        value: Any value built of dicts/mappings, lists/tuples and scalars.
        stop_after: Stop walking as soon as this depth is exceeded (the result is then ``stop_after + 1``).

    Returns:
        The maximum depth found.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = list(item.keys()) + list(item.values())
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if stop_after is not None and deepest > stop_after:
            return deepest
        stack.extend(
            (child, depth)
            for child in children
            if type(child) not in _SCALARS and isinstance(child, Mapping | list | tuple)
        )
    return deepest


def depth_error(limit: int, where: str, error: type[CompozyNbError] = InvalidPayloadError) -> CompozyNbError:
    """The error for a value nested deeper than ``limit`` at ``where`` (a field, a file, ``request body``)."""
    return error(f"{where}: nested deeper than {limit} levels (maps and lists)", field=where)


def check_depth(
    value: Any,
    limit: int = MAX_DEPTH,
    where: str = "payload",
    error: type[CompozyNbError] = InvalidPayloadError,
) -> None:
    """Refuse ``value`` when maps and lists nest deeper than ``limit``.

    Args:
        value: The parsed input.
        limit: Deepest nesting allowed.
        where: What ``value`` is, for the message and the error's ``field`` (``payload``, ``request body``).
        error: The error class (``InvalidPayloadError``; ``ConfigError`` for configuration files).

    Raises:
        CompozyNbError: ``error`` (code ``INVALID_PAYLOAD`` by default) naming ``where`` and ``limit``.
    """
    if nesting_depth(value, stop_after=limit) > limit:
        raise depth_error(limit, where, error)
