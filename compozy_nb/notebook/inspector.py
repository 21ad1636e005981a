"""The memory inspector: an ipywidgets widget over a project's stored memories.

A sortable table of instances (SCAN + O(1) stats each, key variables as columns, utilisation bars); selecting one
shows a page of its transcript, its archive and, when the engine offers one (``MemoryInstance.log``), its
operation log. Messages are read one page at a time (``read(limit, offset)``): a 100,000-message list never
reaches the browser.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from compozy_nb.errors import ConfigError, ErrorCode
from compozy_nb.notebook import views
from compozy_nb.notebook.frames import key_variables

SORTABLE = ("key", "message_count", "token_count", "token_utilization", "message_utilization", "last_flush")
TABLE_COLUMNS = ("message_count", "token_count", "token_utilization", "message_utilization", "ttl_seconds")


def _widgets() -> Any:
    try:
        import ipywidgets
    except ImportError:  # pragma: no cover - ipywidgets is in the notebook and test extras
        raise ConfigError(
            "the inspector needs ipywidgets: pip install 'compozy-nb[notebook]'", code=ErrorCode.MISSING_DEPENDENCY
        ) from None
    return ipywidgets


class Inspector:
    """The widget. Use :func:`compozy_nb.inspect` or ``%compozy inspect``.

    Args:
        project: The project whose namespace is listed.
        pattern: Key GLOB.
        page_size: Messages per transcript page.
        max_instances: Instances listed at most (the table says when there are more).
    """

    def __init__(self, project: Any, pattern: str = "*", *, page_size: int = 50, max_instances: int = 500) -> None:
        w = _widgets()
        self.project = project
        self.page_size = page_size
        self.max_instances = max_instances
        self.rows: list[dict[str, Any]] = []
        self.page = 0
        self.pattern = w.Text(
            value=pattern, description="pattern", continuous_update=False, layout=w.Layout(width="260px")
        )
        self.sort = w.Dropdown(options=SORTABLE, value="key", description="sort by", layout=w.Layout(width="240px"))
        self.descending = w.Checkbox(value=False, description="descending", indent=False)
        self.refresh_button = w.Button(description="refresh", icon="refresh")
        self.table = w.HTML()
        self.instance = w.Dropdown(options=[], description="instance", layout=w.Layout(width="480px"))
        self.previous_page = w.Button(description="◀ older", layout=w.Layout(width="90px"))
        self.next_page = w.Button(description="newer ▶", layout=w.Layout(width="90px"))
        self.page_label = w.Label()
        self.transcript, self.archive, self.log = w.HTML(), w.HTML(), w.HTML()
        self.tabs = w.Tab(children=[self.transcript, self.archive, self.log])
        for index, title in enumerate(("transcript", "archive", "operation log")):
            self.tabs.set_title(index, title)
        self.widget = w.VBox(
            [
                w.HTML(f"<b>compozy-nb inspector</b> · {html.escape(project.namespace)}*"),
                w.HBox([self.pattern, self.sort, self.descending, self.refresh_button]),
                self.table,
                w.HBox([self.instance, self.previous_page, self.page_label, self.next_page]),
                self.tabs,
            ]
        )
        self._wire()
        self.refresh()

    def _wire(self) -> None:
        self.refresh_button.on_click(lambda _: self.refresh())
        self.pattern.observe(lambda _: self.refresh(), names="value")
        self.sort.observe(lambda _: self._show_table(), names="value")
        self.descending.observe(lambda _: self._show_table(), names="value")
        self.instance.observe(lambda _: self.select(self.instance.value), names="value")
        self.previous_page.on_click(lambda _: self._turn(-1))
        self.next_page.on_click(lambda _: self._turn(1))

    # ------------------------------------------------------------------ instances
    def refresh(self) -> None:
        """Scan the keys again, re-read the stats, keep the selection when it still exists."""
        selected = self.instance.value
        stats = self.project.instances(self.pattern.value or "*", limit=self.max_instances + 1)
        self.rows = [self._row(s) for s in stats]
        self._show_table()
        keys = [r["key"] for r in self._sorted()]
        self.instance.options = keys
        if keys:
            key = selected if selected in keys else keys[0]
            if self.instance.value == key:
                self.select(key)
            else:
                self.instance.value = key
        else:
            self.transcript.value = views.transcript_html([], title="no instance matches the pattern")

    def _row(self, stats: dict[str, Any]) -> dict[str, Any]:
        ref = self._resource_for(str(stats["key"]))
        template = self.project.resources[ref].key if ref else None
        row: dict[str, Any] = {"key": stats["key"], "resource": ref or ""}
        row.update(key_variables(template, str(stats["key"])))
        limits = self.project.runtime(ref).resource if ref else None
        tokens, messages = stats.get("token_count"), stats.get("message_count")
        max_tokens = limits.token_limit if limits else None
        max_messages = limits.max_messages if limits else None
        row.update({k: stats.get(k) for k in TABLE_COLUMNS})
        row["token_utilization"] = tokens / max_tokens if max_tokens and tokens is not None else None
        row["message_utilization"] = messages / max_messages if max_messages and messages is not None else None
        row["last_flush"] = stats.get("last_flush")
        return row

    def _resource_for(self, key: str) -> str | None:
        """The first resource whose key template renders to keys like ``key`` (None when none does)."""
        for rid, resource in self.project.resources.items():
            if resource.key and (resource.key == key or key_variables(resource.key, key)):
                return str(rid)
        return None

    def _sorted(self) -> list[dict[str, Any]]:
        column = self.sort.value

        def order(row: dict[str, Any]) -> tuple[int, Any]:
            value = row.get(column)
            return (value is None, value if value is not None else 0)

        return sorted(self.rows[: self.max_instances], key=order, reverse=bool(self.descending.value))

    def _show_table(self) -> None:
        rows = self._sorted()
        variables = [c for r in rows for c in r if c not in ("key", "resource", *TABLE_COLUMNS, "last_flush")]
        columns = ["key", "resource", *dict.fromkeys(variables), *TABLE_COLUMNS, "last_flush"]
        more = " (more not listed: narrow the pattern)" if len(self.rows) > self.max_instances else ""
        self.table.value = views.stats_table_html(
            rows, columns, limit=self.max_instances, caption=f"{len(rows)} instances{more}"
        )
        keys = [r["key"] for r in rows]
        if list(self.instance.options) != keys:
            selected = self.instance.value
            self.instance.options = keys
            if selected in keys:
                self.instance.value = selected

    # ------------------------------------------------------------------ one instance
    def memory(self, key: str) -> Any:
        """The instance under ``key`` with its resource's limits (a generic resource when none matches)."""
        from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime
        from compozy_nb.project import _ANY_RESOURCE

        ref = self._resource_for(key)
        if ref:
            return self.project.memory(ref, key=key)
        return MemoryInstance(MemoryRuntime(_ANY_RESOURCE), key, self.project.backend, self.project.name)

    def select(self, key: str | None, page: int | None = None) -> None:
        """Show ``key``: a page of its transcript (the newest by default), its archive, its operation log."""
        if not key:
            return
        mem = self.memory(key)
        total = int(mem.stats().get("message_count") or 0)
        pages = max(1, -(-total // self.page_size))
        self.page = pages - 1 if page is None else max(0, min(page, pages - 1))
        self.page_label.value = f"page {self.page + 1}/{pages}"
        self.previous_page.disabled = self.page == 0
        self.next_page.disabled = self.page >= pages - 1
        self.transcript.value = mem.read(self.page_size, self.page * self.page_size)._repr_html_()
        archive = mem.read(self.page_size, 0, archive=True)
        self.archive.value = views.transcript_html(
            archive["messages"], title=f"archive · {key} (newest first)", total_count=archive.get("total_count")
        )
        self.log.value = _log_html(getattr(mem, "log", None), self.page_size)

    def _turn(self, step: int) -> None:
        self.select(self.instance.value, self.page + step)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]


def _log_html(log: Callable[..., Any] | None, limit: int) -> str:
    """The operation log when the engine provides ``MemoryInstance.log`` (its HTML view or a table)."""
    if log is None:
        return "<div class='cnb-line'>no operation log for this memory</div>"
    entries = log(limit=limit)
    if hasattr(entries, "_repr_html_"):
        return str(entries._repr_html_())
    rows = [dict(e) for e in entries]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return views.stats_table_html(rows, columns, limit=limit, caption="operation log")


def inspect(project: Any = None, pattern: str = "*", *, page_size: int = 50) -> Inspector:
    """Open the memory inspector on ``project`` (default: the ``%compozy`` magic's current project, else a
    project named ``default`` on the configured backend)."""
    return Inspector(project if project is not None else _current_project(), pattern, page_size=page_size)


def _current_project() -> Any:
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("Compozy") if shell is not None else None
    if magics is not None:
        return magics.project
    from compozy_nb.project import Project

    return Project()
