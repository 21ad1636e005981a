"""``mem.plot()``: where the tokens of a memory go (matplotlib, imported only here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance


def plot_memory(mem: MemoryInstance, ax: Any = None) -> Any:
    """Bars: tokens per message, archived ones (flushed or evicted) in grey then the live ones; line: the
    cumulative tokens of the live messages against ``max_tokens``; a dashed line where the archive ends;
    summary messages marked with a star. Returns the Axes."""
    import matplotlib

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(9, 3.5))
    archived = list(reversed(mem.read(archive=True)["messages"]))
    live = mem.read()["messages"]
    tokens_archived = [int(m.get("tokens", 0)) for m in archived]
    tokens_live = [int(m.get("tokens", 0)) for m in live]
    x_arch = list(range(len(archived)))
    x_live = list(range(len(archived), len(archived) + len(live)))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if archived:
        ax.bar(x_arch, tokens_archived, color="lightgrey", label="archived (flushed/evicted)")
        ax.axvline(len(archived) - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.bar(x_live, tokens_live, color=colors[0], label="tokens per message")
    cumulative, total = [], 0
    for t in tokens_live:
        total += t
        cumulative.append(total)
    twin = ax.twinx()
    if live:
        twin.plot(x_live, cumulative, color=colors[1], marker=".", label="cumulative tokens")
    limit = mem.resource.token_limit
    if limit:
        twin.axhline(limit, color="red", linestyle=":", label=f"max_tokens = {limit}")
    summaries = [x for x, m in zip(x_live, live, strict=True) if m.get("summary")]
    if summaries:
        ax.scatter(
            summaries,
            [tokens_live[x - len(archived)] for x in summaries],
            marker="*",
            s=150,
            color=colors[2],
            zorder=3,
            label="summary",
        )
    twin.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("message (oldest → newest)")
    ax.set_ylabel("tokens")
    twin.set_ylabel("cumulative tokens")
    ax.set_title(f"memory {mem.key!r} · {len(live)} live, {len(archived)} archived")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize="small")
    return ax
