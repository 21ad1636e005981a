"""Memories as DataFrames and files: both ways, lossless.

:func:`messages_frame` turns read messages into a DataFrame (``ts`` a timezone-aware ``datetime64``, a
``tool_calls`` column); :func:`frame_messages` turns such a DataFrame (or any with ``role`` and ``content``
columns) back into messages. :func:`export_messages` / :func:`import_messages` write and read JSONL, or Parquet
(pyarrow, the ``parquet`` extra) when the path ends in ``.parquet``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compozy_nb.errors import ConfigError, InvalidPayloadError
from compozy_nb.memory.transcript import text_projection

FIRST_COLUMNS = ("position", "role", "content", "tokens")
_COMPUTED = ("position", "tokens", "ts")


def messages_frame(messages: Sequence[Mapping[str, Any]], start: int = 0) -> Any:
    """A DataFrame, one row per message: position, role, content, tokens, then every other field in first-seen
    order (``id``, ``ts``, ``tool_calls`` ...).

    ``ts`` is ``datetime64[ns, UTC]`` (``NaT`` for messages written by another tool), ``tool_calls`` (present when
    a message has tool calls) holds the list of calls or ``None``; ``content`` is a string, a list of parts or
    ``None`` as written.
    """
    import pandas as pd

    rows = [{"position": start + i, **message} for i, message in enumerate(messages)]
    columns = list(FIRST_COLUMNS)
    for row in rows:
        columns.extend(name for name in row if name not in columns)
    frame = pd.DataFrame(rows, columns=columns)
    if "ts" in frame.columns:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, errors="coerce", format="ISO8601").astype(
            "datetime64[ns, UTC]"
        )
    for name in ("content", "tool_calls"):  # as written: a string, a list or None (not NaN)
        if name in frame.columns:
            frame[name] = pd.Series([row.get(name) for row in rows], index=frame.index, dtype=object)
    return frame


def frame_messages(frame: Any) -> list[dict[str, Any]]:
    """The messages of a DataFrame: one per row, empty cells dropped, computed columns ignored.

    ``position``, ``tokens`` and ``ts`` are recomputed when stored; ``id`` is kept (so writing back the same
    rows adds nothing to an append). A missing ``content`` is ``None`` (an assistant message with tool calls).

    Raises:
        InvalidPayloadError: when the frame has no ``content`` column.
    """
    if "content" not in frame.columns:
        raise InvalidPayloadError("a DataFrame payload needs a content column", field="content")
    messages = []
    for record in frame.to_dict(orient="records"):
        message: dict[str, Any] = {}
        for name, value in record.items():
            plain = _plain(value)
            if name in _COMPUTED or (plain is None and name != "content"):
                continue
            message[str(name)] = plain
        messages.append(message)
    return messages


def _plain(value: Any) -> Any:
    """A cell as plain Python data: numpy scalars and arrays unwrapped, NaN/NaT/NA as None."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def export_messages(messages: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write messages to ``path``: Parquet when it ends in ``.parquet``, else JSONL (one message per line).

    The Parquet file has the columns ``id``, ``role``, ``content`` (the text), ``tokens``, ``ts`` (a UTC
    timestamp) and ``message`` (the whole message as JSON, what :func:`import_messages` reads).
    """
    target = Path(path)
    lines = [json.dumps(dict(m), ensure_ascii=False, separators=(",", ":"), allow_nan=False) for m in messages]
    if target.suffix.lower() == ".parquet":
        pa, pq = _pyarrow()
        import pandas as pd

        table = pa.table(
            {
                "id": [str(m.get("id", "")) for m in messages],
                "role": [str(m.get("role", "")) for m in messages],
                "content": [text_projection(m.get("content")) for m in messages],
                "tokens": pa.array([m.get("tokens") for m in messages], type=pa.int64()),
                "ts": pa.array(pd.to_datetime([m.get("ts") for m in messages], utc=True, format="ISO8601")),
                "message": lines,
            }
        )
        pq.write_table(table, target)
    else:
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target


def import_messages(path: str | Path) -> list[dict[str, Any]]:
    """The messages of a file written by :func:`export_messages` (JSONL or Parquet by suffix).

    Raises:
        ConfigError: the file cannot be read, or a line is not a JSON object (naming file:line).
    """
    source = Path(path)
    try:
        if source.suffix.lower() == ".parquet":
            _, pq = _pyarrow()
            lines = [str(text) for text in pq.read_table(source, columns=["message"]).column("message").to_pylist()]
        else:
            lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{source}: cannot read the messages ({type(exc).__name__})", file=str(source)) from None
    messages = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{source}:{number}: not a JSON message object", file=str(source), line=number)
        messages.append(value)
    return messages


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the parquet extra is part of the test extra
        raise ConfigError("Parquet needs pyarrow: pip install 'compozy-nb[parquet]'") from None
    return pa, pq
