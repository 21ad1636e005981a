"""Durations as Compozy writes them: Go durations (``1h30m``, ``500ms``) plus days/weeks (``7d``, ``2w``)."""

from __future__ import annotations

import math
import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
MAX_DURATION_SECONDS = 100 * 365 * 86400  # 100 years: in milliseconds still an exact integer in Lua and Redis
MIN_DURATION_SECONDS = 0.001  # Redis expires in whole milliseconds: less would silently mean "never"
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")


def parse_duration(value: str | int | float) -> float:
    """Parse a duration into seconds.

    ``"0"`` and ``0`` mean zero (for a TTL: no expiry). A bare number is seconds. Anything else must lie
    between 1 ms and 100 years.

    Raises:
        ValueError: an unparsable, negative, infinite or NaN duration, a boolean, one under 1 ms or one
            over 100 years.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"invalid duration {_shown(value)} (use e.g. 30s, 15m, 24h, 7d, 1h30m, or 0 for none)")
    seconds = _seconds(value)
    if not math.isfinite(seconds):
        raise ValueError(f"duration {_shown(value)} is not a finite number")
    if seconds < 0:
        raise ValueError(f"duration {_shown(value)} must not be negative")
    if 0 < seconds < MIN_DURATION_SECONDS:
        raise ValueError(f"duration {_shown(value)} is shorter than 1ms (Redis would never expire it); use 0 for none")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {_shown(value)} is longer than the maximum of 100 years")
    return seconds


def _shown(value: object) -> str:
    """The value as an error message shows it (at most 40 characters)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python prints
        return "(a number too long to print)"
    return text if len(text) <= 40 else f"{text[:37]}..."


def _seconds(value: str | int | float) -> float:
    """The number of seconds a duration names (inf for a number too large for a float)."""
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # a 400-digit integer
            return math.inf
    text = value.strip().lower()
    if not text:
        raise ValueError("invalid duration ''")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, seconds = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {_shown(value)} (use e.g. 30s, 15m, 24h, 7d, 1h30m, or 0 for none)")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly (``86400`` -> ``1d``), for summaries."""
    if seconds <= 0:
        return "none"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
