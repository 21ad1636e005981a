"""Durations as Compozy writes them: Go durations (``1h30m``, ``500ms``) plus days/weeks (``7d``, ``2w``)."""

from __future__ import annotations

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
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")


def parse_duration(value: str | int | float) -> float:
    """Parse a duration into seconds.

    ``"0"`` and ``0`` mean zero (for a TTL: no expiry). A bare number is seconds.

    Raises:
        ValueError: an unparsable or negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if not text:
            raise ValueError("invalid duration ''")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text):
                raise ValueError(f'invalid duration {value!r} (use e.g. 30s, 15m, 24h, 7d, 1h30m, or "0" for none)')
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly (``86400`` -> ``1d``), for summaries."""
    if seconds <= 0:
        return "none"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
