"""``mem.plot()``: where the tokens of a memory go (matplotlib, imported only here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compozy_nb.errors import ConfigError, ErrorCode

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance


@dataclass
class MemoryPlot:
    """What :func:`plot_memory` drew: the matplotlib ``ax`` and ``figure`` to adjust or save. It shows nothing
    itself (the figure is already shown), so a cell ending in ``mem.plot()`` prints no ``<Axes …>`` line."""

    ax: Any
    figure: Any

    def _ipython_display_(self) -> None:
        """Nothing: matplotlib's inline backend shows the figure."""

    def __repr__(self) -> str:
        return f"MemoryPlot({self.ax.get_title()!r})"

    def __getattr__(self, name: str) -> Any:
        """Everything else is the Axes' (``get_title``, ``set_xlim`` …), as when ``plot()`` returned it."""
        return getattr(self.ax, name)


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "mem.plot() needs matplotlib: pip install 'compozy-nb[notebook]' (or 'compozy-nb[plot]')",
            code=ErrorCode.MISSING_DEPENDENCY,
        ) from None
    return matplotlib


def plot_memory(mem: MemoryInstance, ax: Any = None) -> MemoryPlot:
    """One token axis: bars for the tokens of each message (archived ones — flushed or evicted — in grey, left
    of a dashed line), a line for the running total of the live messages, and ``max_tokens`` as a horizontal
    limit line; summaries are starred. The y axis starts at 0 and always includes the limit."""
    matplotlib = _matplotlib()
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(9, 3.5))
    archived = list(reversed(mem.read(archive=True)["messages"]))
    live = mem.read()["messages"]
    tokens_archived = [int(m.get("tokens", 0)) for m in archived]
    tokens_live = [int(m.get("tokens", 0)) for m in live]
    start = len(archived)
    x_live = list(range(start, start + len(live)))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if archived:
        ax.bar(range(start), tokens_archived, color="lightgrey", label="archived (flushed/evicted)")
        ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.bar(x_live, tokens_live, color=colors[0], label="tokens per message")
    running, total = [], 0
    for tokens in tokens_live:
        total += tokens
        running.append(total)
    if live:
        ax.step(x_live, running, where="mid", color=colors[1], label="live tokens (running total)")
    limit = mem.resource.token_limit
    if limit:
        ax.axhline(limit, color="#d93025", linestyle="--", linewidth=1.5, label=f"max_tokens = {limit:,}")
    summaries = [x for x, m in zip(x_live, live, strict=True) if m.get("summary")]
    if summaries:
        ax.scatter(summaries, [tokens_live[x - start] for x in summaries], marker="*", s=150, color=colors[2], zorder=3)
        ax.scatter([], [], marker="*", s=150, color=colors[2], label="summary")
    top = max([limit or 0, *running, *tokens_archived, 1])
    ax.set_ylim(0, top * 1.1)
    ax.set_xlabel("message (oldest → newest)")
    ax.set_ylabel("tokens")
    ax.set_title(f"memory {mem.key!r} · {len(live)} live, {len(archived)} archived")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.figure.tight_layout()
    return MemoryPlot(ax, ax.figure)
