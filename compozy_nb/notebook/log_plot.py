"""``mem.plot_log()``: a memory's tokens and messages over time, from its operation log (matplotlib)."""

from __future__ import annotations

from typing import Any

MARKERS = {"evicted": ("v", "tab:red"), "flushed": ("s", "tab:orange"), "summary": ("*", "tab:green")}


def plot_log(events: Any, ax: Any = None) -> Any:
    """Tokens (left axis) and messages (right axis) after each logged change, with evictions, flushes and
    summaries marked, clears and deletes as vertical lines. ``events`` is a :class:`LogResult`. Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.5))
    frame = events.to_pandas()
    frame = frame[frame["tokens"].notna()]
    ax.step(frame["ts"], frame["tokens"], where="post", color="tab:blue", label="tokens")
    right = ax.twinx()
    right.step(frame["ts"], frame["messages"], where="post", color="tab:grey", linestyle=":", label="messages")
    for name, (marker, color) in MARKERS.items():
        rows = _marked(frame, name)
        if len(rows):
            ax.scatter(rows["ts"], rows["tokens"], marker=marker, color=color, s=60, zorder=3, label=name)
    for ts in frame[frame["operation"].isin(["clear", "delete"])]["ts"]:
        ax.axvline(ts, color="black", linewidth=1, linestyle="--")
    ax.set(xlabel="time (UTC)", ylabel="tokens", title=f"operation log · {events.key}")
    right.set_ylabel("messages")
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, loc="upper left", fontsize="small")
    return ax


def _marked(frame: Any, name: str) -> Any:
    if name == "summary":
        return frame[frame["summary_id"].notna() & (frame["summary_id"] != "")]
    return frame[frame[name].fillna(0) > 0]
