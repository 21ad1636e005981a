"""DataFrames that show themselves as transcripts or stats tables (imports pandas: load lazily).

A :class:`TranscriptFrame` is a plain ``pandas.DataFrame`` (one row per message) whose notebook view is the chat
transcript; anything derived from it (a column selection, a filter) is an ordinary DataFrame again. A
:class:`StatsFrame` is one row per instance, with the key template's variables parsed back into columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from compozy_nb.notebook import views
from compozy_nb.notebook.views import DISPLAY

_VARIABLE = re.compile(r"\{\{-?\s*\.([A-Za-z_][\w.]*)\s*-?\}\}")
_EXPRESSION = re.compile(r"\{\{.*?\}\}")


def key_pattern(template: str | None) -> re.Pattern[str] | None:
    """A regex matching keys rendered from ``template`` with one named group per ``{{.variable}}`` (the last
    path segment names it); other template expressions match anything. None without variables."""
    if not template or "{{" not in template:
        return None
    pattern, names, position = "", set(), 0
    for match in _EXPRESSION.finditer(template):
        pattern += re.escape(template[position : match.start()])
        variable = _VARIABLE.fullmatch(match.group(0))
        name = variable.group(1).split(".")[-1] if variable else None
        if name and name.isidentifier() and name not in names:
            names.add(name)
            pattern += f"(?P<{name}>.+?)"
        else:
            pattern += ".+?"
        position = match.end()
    pattern += re.escape(template[position:])
    return re.compile(f"^{pattern}$") if names else None


def key_variables(template: str | None, key: str) -> dict[str, str]:
    """The variables ``template`` was rendered with to give ``key`` (empty when it does not match)."""
    compiled = key_pattern(template)
    match = compiled.match(key) if compiled else None
    return dict(match.groupdict()) if match else {}


def utc_timestamps(frame: pd.DataFrame, column: str = "ts") -> pd.DataFrame:
    """Turn an ISO text column into timezone-aware (UTC) datetimes, in place; unparseable values become NaT."""
    if column in frame.columns:
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce", format="ISO8601")
    return frame


class TranscriptFrame(pd.DataFrame):  # type: ignore[misc]
    """Messages as a DataFrame (``position``, ``role``, ``content``, ``tokens``, ``ts`` …) shown as a chat
    transcript in notebooks. ``compozy`` holds what the view needs (key, limits, total count)."""

    _metadata = ["compozy"]  # noqa: RUF012 - pandas' own convention

    @property
    def _constructor(self) -> Any:
        return pd.DataFrame

    def _repr_html_(self) -> str | None:
        info: Mapping[str, Any] = getattr(self, "compozy", None) or {}
        messages = [{k: v for k, v in row.items() if _present(v)} for row in self.to_dict(orient="records")]
        offset = int(messages[0].get("position", 0)) if messages else 0
        return views.transcript_html(
            messages,
            title=str(info.get("title", "messages")),
            offset=offset,
            total_count=info.get("total_count"),
            max_tokens=info.get("max_tokens"),
            replacement=info.get("replacement"),
            limit=int(DISPLAY["limit"]),
        )


class StatsFrame(pd.DataFrame):  # type: ignore[misc]
    """Stats of many instances, one row each; shown with utilisation bars, cut to the display limit."""

    _metadata = ["compozy"]  # noqa: RUF012 - pandas' own convention

    @property
    def _constructor(self) -> Any:
        return pd.DataFrame

    def _repr_html_(self) -> str | None:
        info: Mapping[str, Any] = getattr(self, "compozy", None) or {}
        rows = self.to_dict(orient="records")
        if info.get("single") and len(rows) == 1:
            return views.stats_card_html({k: v for k, v in rows[0].items() if _present(v)})
        return views.stats_table_html(
            rows,
            [str(c) for c in self.columns],
            limit=int(DISPLAY["limit"]),
            caption=str(info.get("caption", f"{len(rows)} instances")),
        )


def _present(value: Any) -> bool:
    if isinstance(value, list | dict):
        return True
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):
        return True


def transcript_frame(rows: list[dict[str, Any]], columns: list[str], info: Mapping[str, Any]) -> TranscriptFrame:
    """Build a :class:`TranscriptFrame` with tz-aware ``ts``."""
    frame = TranscriptFrame(rows, columns=columns)
    utc_timestamps(frame)
    frame.compozy = dict(info)
    return frame


def stats_frame(
    results: Sequence[Mapping[str, Any]],
    template: str | Sequence[str | None] | None = None,
    *,
    single: bool = False,
    caption: str = "",
) -> StatsFrame:
    """One row per stats output: ``key``, the variables of the key template (the first of several that matches),
    then the other fields."""
    templates = [template] if template is None or isinstance(template, str) else list(template)
    rows = []
    for result in results:
        key = str(result.get("key", ""))
        row: dict[str, Any] = {"key": result.get("key")}
        row.update(next((found for t in templates if (found := key_variables(t, key))), {}))
        row.update({k: v for k, v in result.items() if k not in ("operation", "key")})
        rows.append(row)
    frame = StatsFrame(rows)
    utc_timestamps(frame, "last_flush")
    frame.compozy = {"single": single, "caption": caption or f"{len(rows)} instances"}
    return frame
