"""Rich results: operation outputs and workflow runs stay plain dicts (JSON as documented) and also know how
to show themselves in Jupyter (``_repr_html_``) and become DataFrames (``to_pandas``). pandas is imported
only when a DataFrame is asked for."""

from __future__ import annotations

import html
import json
from typing import Any

from compozy_nb.notebook.views import DISPLAY  # defined with the views it sizes (no import circle)

MESSAGE_COLUMNS = ("position", "role", "content", "tokens")
TASK_COLUMNS = ("task", "status", "duration_ms", "error", "message", "output")


def _cell(value: Any, width: int = 200) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, default=str)
    text = "" if value is None else str(value)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return html.escape(text)


def html_table(rows: list[dict[str, Any]], columns: list[str], *, caption: str = "", limit: int | None = None) -> str:
    """A small HTML table (escaped), cut to ``limit`` rows with a note."""
    limit = DISPLAY["limit"] if limit is None else limit
    shown = rows[:limit]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{_cell(r.get(c))}</td>" for c in columns) + "</tr>"
        for r in shown
    )
    note = (
        f"<p><i>{len(rows) - len(shown)} more rows not shown (display_limit={limit})</i></p>"
        if len(rows) > len(shown)
        else ""
    )
    cap = f"<caption style='text-align:left'><b>{html.escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def message_rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per message, with its position in the list (or archive)."""
    start = int(output.get("offset", 0) or 0)
    return [{"position": start + i, **m} for i, m in enumerate(output.get("messages", []))]


def message_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Position, role, content, tokens first, then every other field in first-seen order."""
    columns = list(MESSAGE_COLUMNS)
    for row in rows:
        for name in row:
            if name not in columns:
                columns.append(name)
    return columns


def display_limits(resource: Any) -> dict[str, Any]:
    """What the notebook views need from a memory resource: its limits and redaction string."""
    privacy = getattr(resource, "privacy_policy", None)
    return {
        "max_tokens": getattr(resource, "token_limit", None),
        "max_messages": getattr(resource, "max_messages", None),
        "replacement": getattr(privacy, "default_redaction_string", None),
    }


class OperationResult(dict[str, Any]):
    """The output map of a memory operation (a dict), with notebook display.

    ``limits`` (not part of the map) carries what the views need from the resource: ``max_tokens``,
    ``max_messages`` and the redaction string.
    """

    def __init__(self, data: Any = (), /, *, limits: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.limits: dict[str, Any] = dict(limits or {})

    @property
    def operation(self) -> str:
        """Which operation produced it."""
        return str(self.get("operation", ""))

    def _view_info(self) -> dict[str, Any]:
        return {
            "title": f"{self.operation} · {self.get('key', '')}",
            "total_count": self.get("total_count"),
            "max_tokens": self.limits.get("max_tokens"),
            "replacement": self.limits.get("replacement"),
            "limit": DISPLAY["limit"],
        }

    def to_pandas(self) -> Any:
        """A DataFrame: one row per message for ``read`` (shown as a transcript in notebooks, ``ts`` as
        timezone-aware datetimes), one row otherwise."""
        if "messages" in self:
            from compozy_nb.memory.frames import messages_frame
            from compozy_nb.notebook.frames import TranscriptFrame

            frame = TranscriptFrame(messages_frame(self["messages"], int(self.get("offset", 0) or 0)))
            frame.compozy = self._view_info()
            return frame
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in self.items() if k != "operation"}])

    def summary(self) -> str:
        """The essentials in one line, e.g. ``append · conv:ada:s1 · +2 → 5 messages · 61/4,000 tokens``."""
        from compozy_nb.notebook.views import operation_line

        return operation_line(self, self.limits.get("max_tokens"), self.limits.get("max_messages"))

    def _repr_html_(self) -> str:
        from compozy_nb.notebook import views

        if "messages" in self:
            info = self._view_info()
            return views.transcript_html(
                self["messages"],
                title=info["title"],
                offset=int(self.get("offset", 0) or 0),
                total_count=info["total_count"],
                max_tokens=info["max_tokens"],
                replacement=info["replacement"],
                limit=info["limit"],
            )
        if self.operation == "stats":
            return views.stats_card_html(self)
        return views.operation_html(self, self.limits.get("max_tokens"), self.limits.get("max_messages"))


class RunResult(dict[str, Any]):
    """The run JSON of a workflow (a dict), with a per-task table in notebooks."""

    def task_rows(self) -> list[dict[str, Any]]:
        """One row per task: id, status, duration, error code, a short output preview."""
        rows = []
        for task_id, task in self.get("tasks", {}).items():
            output = task.get("output")
            preview: Any = output
            if isinstance(output, dict):
                if "content" in output and "prompt" in output:
                    preview = output["content"]
                else:
                    preview = {k: v for k, v in output.items() if k not in ("messages", "prompt", "ids", "key")}
            error = task.get("error") or {}
            rows.append(
                {
                    "task": task_id,
                    "status": task.get("status"),
                    "duration_ms": task.get("duration_ms"),
                    "error": error.get("code"),
                    "message": error.get("message"),
                    "output": preview,
                }
            )
        return rows

    def to_pandas(self) -> Any:
        """The per-task table as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.task_rows(), columns=list(TASK_COLUMNS))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        lines = [f"RunResult(workflow={self.get('workflow_id')!r}, status={self.get('status')!r})"]
        for row in self.task_rows():
            error = f" [{row['error']}] {row['message']}" if row["error"] else ""
            lines.append(f"  {row['task']}: {row['status']}{error}")
        if self.get("output") is not None:
            lines.append(f"  output: {json.dumps(self['output'], ensure_ascii=False, default=str)[:300]}")
        printer.text("\n".join(lines))

    def _repr_html_(self) -> str:
        caption = f"workflow {self.get('workflow_id')} · {self.get('status')}"
        table = html_table(self.task_rows(), list(TASK_COLUMNS), caption=caption)
        out = self.get("output")
        return self._failure_html() + table + (f"<p><b>output</b>: {_cell(out, 500)}</p>" if out is not None else "")

    def failure(self) -> str | None:
        """Why the run failed, in one line (``task 'x' failed: [CODE] message``), or None."""
        error = self.get("error")
        if not error:
            return None
        where = f"task '{error['task']}'" if error.get("task") else "the workflow output"
        return f"{where} failed: [{error.get('code')}] {error.get('message')}"

    def _failure_html(self) -> str:
        reason = self.failure()
        return f"<p style='color:#a50e0e;text-align:left'><b>{html.escape(reason)}</b></p>" if reason else ""
