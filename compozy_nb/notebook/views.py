"""HTML views of memories: the chat transcript, compact operation lines, stats cards and tables.

Pure functions from plain data (output maps, message dicts) to HTML strings; every value is escaped. The
DataFrame subclasses that carry these views live in :mod:`compozy_nb.notebook.frames`.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# display settings (the magic's configurable options): rows shown in tables and transcripts, progress bars
DISPLAY: dict[str, Any] = {"limit": 50, "progress": None}
ROLE_COLOURS = {
    "user": ("#e8f0fe", "#1a56db"),
    "assistant": ("#e6f4ea", "#137333"),
    "system": ("#f1f3f4", "#5f6368"),
    "tool": ("#fef7e0", "#b06000"),
}
REDACTION = re.compile(r"\[REDACTED[^\]\n]{0,40}\]")
_CSS = (
    "<style>"
    ".cnb-t{font-family:system-ui,sans-serif;font-size:13px;max-width:860px}"
    ".cnb-h{color:#444;margin:4px 0 8px 0}"
    ".cnb-m{border-radius:10px;padding:6px 10px;margin:6px 0;border-left:4px solid;text-align:left;"
    "white-space:pre-wrap;overflow-wrap:anywhere;color:#202124}"
    ".cnb-m.cnb-user{margin-left:60px}.cnb-m.cnb-assistant,.cnb-m.cnb-tool,.cnb-m.cnb-system{margin-right:60px}"
    ".cnb-meta{font-size:11px;color:#5f6368;margin-bottom:2px;white-space:normal}"
    ".cnb-red{background:#fce8e6;color:#a50e0e;border-radius:3px;padding:0 2px;font-weight:600}"
    ".cnb-call{font-family:monospace;font-size:12px;background:#fff;border:1px solid #dadce0;border-radius:6px;"
    "padding:3px 6px;margin-top:4px;white-space:pre-wrap}"
    ".cnb-sum{border-style:dashed}"
    ".cnb-bar{display:inline-block;width:80px;height:8px;background:#eee;border-radius:4px;vertical-align:middle}"
    ".cnb-bar>span{display:block;height:8px;border-radius:4px}"
    ".cnb-line{font-family:system-ui,sans-serif;font-size:13px}"
    ".cnb-tbl{border-collapse:collapse}.cnb-tbl th,.cnb-tbl td{padding:3px 12px 3px 0;text-align:left;"
    "border-bottom:1px solid #e0e0e0;white-space:nowrap}.cnb-tbl th{font-weight:600;color:#3c4043}"
    "</style>"
)


def esc(value: Any) -> str:
    """``value`` as escaped text (JSON for containers)."""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return html.escape("" if value is None else str(value))


def highlight_redactions(text: str, replacement: str | None = None) -> str:
    """Escape ``text`` and wrap every redaction marker (``[REDACTED]`` and ``replacement``) in a highlight."""
    patterns = [REDACTION.pattern]
    if replacement and not REDACTION.fullmatch(replacement):
        patterns.append(re.escape(replacement))
    pieces = re.split(f"({'|'.join(patterns)})", text)
    out = []
    for i, piece in enumerate(pieces):
        out.append(f"<span class='cnb-red'>{html.escape(piece)}</span>" if i % 2 else html.escape(piece))
    return "".join(out)


def content_html(content: Any, replacement: str | None = None) -> str:
    """A message's content: text (redactions highlighted), or the text of content parts with the other parts
    (images, audio ...) named."""
    if isinstance(content, str):
        return highlight_redactions(content, replacement)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(highlight_redactions(str(part.get("text", "")), replacement))
            elif isinstance(part, Mapping):
                parts.append(f"<span class='cnb-call'>[{esc(part.get('type', 'part'))}]</span>")
            else:
                parts.append(highlight_redactions(str(part), replacement))
        return "\n".join(parts)
    return esc(content)


def tool_calls_html(calls: Any) -> str:
    """OpenAI-shaped ``tool_calls``: one monospace line per call, ``name(arguments)  #id``."""
    if not isinstance(calls, list):
        return f"<div class='cnb-call'>tool_calls: {esc(calls)}</div>"
    lines = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        name = function.get("name", "?") if isinstance(function, Mapping) else "?"
        arguments = function.get("arguments", "") if isinstance(function, Mapping) else function
        call_id = call.get("id", "") if isinstance(call, Mapping) else ""
        lines.append(
            f"<div class='cnb-call'>&#128295; {esc(name)}({esc(arguments)})"
            + (f" <span style='color:#80868b'>#{esc(call_id)}</span>" if call_id else "")
            + "</div>"
        )
    return "".join(lines)


def message_html(message: Mapping[str, Any], position: int, running: int, replacement: str | None = None) -> str:
    """One bubble: role, position, tokens and running total, content, tool calls; summaries marked."""
    role = str(message.get("role", "?"))
    background, border = ROLE_COLOURS.get(role, ("#fff", "#999"))
    tokens = message.get("tokens")
    meta = [f"<b style='color:{border}'>{esc(role)}</b>", f"#{position}"]
    if message.get("name"):
        meta.append(f"name {esc(message['name'])}")
    if message.get("tool_call_id"):
        meta.append(f"result of #{esc(message['tool_call_id'])}")
    if tokens is not None:
        meta.append(f"{esc(tokens)} tokens · Σ {running:,}")
    summary = bool(message.get("summary"))
    if summary:
        meta.append("<b>summary of earlier messages</b>")
    body = content_html(message.get("content"), replacement)
    calls = tool_calls_html(message["tool_calls"]) if message.get("tool_calls") else ""
    classes = f"cnb-m cnb-{esc(role)}" + (" cnb-sum" if summary else "")
    return (
        f"<div class='{classes}' style='background:{background};border-color:{border}'>"
        f"<div class='cnb-meta'>{' · '.join(meta)}</div>{body}{calls}</div>"
    )


def transcript_html(
    messages: Sequence[Mapping[str, Any]],
    *,
    title: str,
    offset: int = 0,
    total_count: int | None = None,
    max_tokens: int | None = None,
    replacement: str | None = None,
    limit: int = 50,
) -> str:
    """The chat transcript: a header (messages shown of total, tokens against the limit) and one bubble per
    message, at most ``limit`` of them (the newest are kept, with a note of how many are hidden)."""
    running = 0
    bubbles = []
    hidden = max(0, len(messages) - limit)
    for i, message in enumerate(messages):
        tokens = message.get("tokens")
        running += int(tokens) if isinstance(tokens, int | float) else 0
        if i >= hidden:
            bubbles.append(message_html(message, offset + i, running, replacement))
    total = total_count if total_count is not None else len(messages)
    header = f"<b>{esc(title)}</b> · {len(messages)} of {total} messages"
    if offset:
        header += f" (from #{offset})"
    header += f" · {running:,}" + (f" / {max_tokens:,}" if max_tokens else "") + " tokens"
    if max_tokens:
        header += " " + bar(running / max_tokens)
    note = f"<div class='cnb-meta'>{hidden} older messages not shown (display_limit={limit})</div>" if hidden else ""
    empty = "<div class='cnb-meta'>no messages</div>" if not messages else ""
    return f"{_CSS}<div class='cnb-t'><div class='cnb-h'>{header}</div>{note}{''.join(bubbles)}{empty}</div>"


def bar(fraction: float | None) -> str:
    """A small utilisation bar (green, orange above 70 %, red above 90 %)."""
    if fraction is None:
        return ""
    value = max(0.0, min(1.0, float(fraction)))
    colour = "#d93025" if value > 0.9 else "#f29900" if value > 0.7 else "#1e8e3e"
    return (
        f"<span class='cnb-bar' title='{fraction:.0%}'><span style='width:{value * 100:.0f}%;"
        f"background:{colour}'></span></span> {fraction:.0%}"
    )


def _count(value: Any, limit: Any, what: str) -> str:
    if value is None:
        return ""
    text = f"{value:,}" if isinstance(value, int) else esc(value)
    if isinstance(limit, int) and limit:
        return f"{text}/{limit:,} {what}"
    return f"{text} {what[:-1] if value == 1 else what}"


def operation_line(result: Mapping[str, Any], max_tokens: int | None, max_messages: int | None) -> str:
    """The essentials of an operation's output map in one line, e.g.
    ``append · conv:ada:s1 · +2 → 5 messages · 61/4,000 tokens``."""
    op = str(result.get("operation", ""))
    parts = [op, str(result.get("key", ""))]
    if op in ("append", "write"):
        added = result.get("appended", result.get("count"))
        total = _count(result.get("total_count"), max_messages, "messages")
        parts.append(f"+{added} → {total}" if op == "append" else f"{added} written → {total}")
        parts.append(_count(result.get("token_count"), max_tokens, "tokens"))
        for extra in ("evicted", "skipped", "duplicates"):
            if result.get(extra):
                parts.append(f"{result[extra]} {extra}")
    elif op == "flush":
        if result.get("dry_run"):
            parts.append(f"dry run: would remove {result.get('would_remove')}, keep {result.get('would_remain')}")
        else:
            parts.append(f"flushed {result.get('flushed_count')} → {result.get('message_count')} messages")
        parts.append(str(result.get("actual_strategy", "")))
        if result.get("summary_generated"):
            parts.append("summary written")
    elif op == "clear":
        parts.append(f"{result.get('messages_cleared')} cleared")
        if result.get("backup_key"):
            parts.append(f"backup {result['backup_key']}")
    elif op == "health":
        parts.append("healthy" if result.get("healthy") else "UNHEALTHY")
        parts.append(_count(result.get("message_count"), max_messages, "messages"))
        parts.append(_count(result.get("token_count"), max_tokens, "tokens"))
        parts.extend(str(w) for w in result.get("warnings") or [])
    elif op == "delete":
        parts.append(f"deleted {result.get('messages_deleted')} messages" if result.get("deleted") else "nothing")
    else:
        parts.extend(f"{k} {v}" for k, v in result.items() if k not in ("operation", "key") and _scalar(v))
    return " · ".join(p for p in parts if p)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def operation_html(result: Mapping[str, Any], max_tokens: int | None, max_messages: int | None) -> str:
    """The one-line summary, with the full output map in a collapsed block."""
    line = operation_line(result, max_tokens, max_messages)
    full = json.dumps(dict(result), ensure_ascii=False, indent=1, default=str)
    return (
        f"{_CSS}<details class='cnb-line'><summary>{html.escape(line)}</summary>"
        f"<pre style='text-align:left'>{html.escape(full)}</pre></details>"
    )


def stats_card_html(result: Mapping[str, Any]) -> str:
    """One instance's stats as a vertical card, utilisation as bars."""
    rows = []
    for name, value in result.items():
        if name == "operation":
            continue
        shown = bar(value) if name.endswith("_utilization") and value is not None else esc(value)
        rows.append(f"<tr><th style='text-align:left'>{esc(name)}</th><td style='text-align:left'>{shown}</td></tr>")
    caption = f"<caption style='text-align:left'><b>stats · {esc(result.get('key'))}</b></caption>"
    return f"{_CSS}<table class='cnb-line cnb-tbl'>{caption}{''.join(rows)}</table>"


def stats_table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, limit: int, caption: str) -> str:
    """Many instances: one row each, utilisation columns as bars, cut to ``limit`` rows with a note."""
    head = "".join(f"<th style='text-align:left'>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows[:limit]:
        cells = []
        for c in columns:
            value = row.get(c)
            shown = bar(value) if c.endswith("_utilization") and isinstance(value, int | float) else esc(value)
            cells.append(f"<td style='text-align:left'>{shown}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        f"<div class='cnb-meta'>{len(rows) - limit} more rows not shown (display_limit={limit})</div>"
        if len(rows) > limit
        else ""
    )
    return (
        f"{_CSS}<table class='cnb-line cnb-tbl'><caption style='text-align:left'><b>{esc(caption)}</b></caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
    )
