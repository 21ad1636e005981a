"""The result of a simulation: DataFrames, an HTML summary and plots."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from compozy_nb.config.memory import MemoryResource
from compozy_nb.simulation.replay import Outcome, Task

TURN_COLUMNS = (
    "resource",
    "conversation_id",
    "turn",
    "messages_sent",
    "tokens_sent",
    "recall",
    "first_user_kept",
    "split_tool_groups",
    "evicted_so_far",
    "flushed_so_far",
)
SUMMARY_COLUMNS = (
    "conversations",
    "agent_turns",
    "messages_stored",
    "tokens_stored",
    "evicted",
    "flushed",
    "summaries",
    "redacted_spans",
    "tokens_sent_mean",
    "tokens_sent_p95",
    "tokens_sent_total",
    "cost",
    "recall_mean",
    "lost_first_user_turns",
    "split_tool_groups",
)
_TOTALS = ("messages_stored", "tokens_stored", "evicted", "flushed", "summaries", "redacted_spans")


class Simulation:
    """What :func:`compozy_nb.simulate` measured.

    Attributes:
        turns: One row per resource x conversation x agent turn: messages and tokens the agent was sent,
            ``recall`` (the share of the conversation so far that was in the context), whether the first user
            message was still there, tool results sent without their call, evictions and flushes so far.
        conversations: One row per resource x conversation: what was stored at the end, evicted, flushed,
            summaries made, redacted spans.
        summary: One row per resource (the index), totals and distributions over all conversations.
        resources: The resource models, by id.
        read: The read options the agent used.
    """

    def __init__(
        self,
        turns: Any,
        conversations: Any,
        resources: Mapping[str, MemoryResource],
        *,
        read: Mapping[str, int],
        price_per_1k_tokens: float | None,
    ) -> None:
        self.turns = turns
        self.conversations = conversations
        self.resources = dict(resources)
        self.read = dict(read)
        self.price_per_1k_tokens = price_per_1k_tokens
        self.summary = self._summarize()

    @classmethod
    def from_outcomes(
        cls,
        models: Sequence[MemoryResource],
        tasks: Sequence[Task],
        outcomes: Sequence[Outcome],
        *,
        read: Mapping[str, int],
        price_per_1k_tokens: float | None,
    ) -> Simulation:
        """Assemble the DataFrames from the tasks' outcomes (in task order, so the result is deterministic)."""
        import pandas as pd

        turn_rows: list[dict[str, Any]] = []
        conversation_rows: list[dict[str, Any]] = []
        for task, outcome in zip(tasks, outcomes, strict=True):
            resource = task.resource.id
            turn_rows.extend({"resource": resource, **row} for row in outcome.turns)
            conversation_rows.extend({"resource": resource, **row} for row in outcome.conversations)
        turns = pd.DataFrame(turn_rows, columns=list(TURN_COLUMNS))
        turns = turns.astype({"first_user_kept": bool})
        conversations = pd.DataFrame(conversation_rows)
        return cls(
            turns,
            conversations,
            {m.id: m for m in models},
            read=read,
            price_per_1k_tokens=price_per_1k_tokens,
        )

    def _summarize(self) -> Any:
        import pandas as pd

        rows = []
        for resource in self.resources:
            turns = self.turns[self.turns["resource"] == resource]
            ends = self.conversations[self.conversations["resource"] == resource]
            sent = turns["tokens_sent"]
            total = int(sent.sum())
            row: dict[str, Any] = {
                "resource": resource,
                "conversations": len(ends),
                "agent_turns": len(turns),
                **{name: int(ends[name].sum()) if len(ends) else 0 for name in _TOTALS},
                "tokens_sent_mean": round(float(sent.mean()), 1) if len(sent) else 0.0,
                "tokens_sent_p95": float(sent.quantile(0.95, interpolation="nearest")) if len(sent) else 0.0,
                "tokens_sent_total": total,
                "cost": (
                    round(total / 1000 * self.price_per_1k_tokens, 6) if self.price_per_1k_tokens is not None else None
                ),
                "recall_mean": round(float(turns["recall"].mean()), 4) if len(turns) else 1.0,
                "lost_first_user_turns": int((~turns["first_user_kept"]).sum()),
                "split_tool_groups": int(turns["split_tool_groups"].sum()),
            }
            rows.append(row)
        return pd.DataFrame(rows, columns=["resource", *SUMMARY_COLUMNS]).set_index("resource")

    def __repr__(self) -> str:
        return f"Simulation({len(self.resources)} resources, {len(self.turns)} agent turns)\n{self.summary}"

    def _repr_html_(self) -> str:
        read = ", ".join(f"{k}={v}" for k, v in self.read.items()) or "everything stored"
        caption = (
            f"<p><b>What-if simulation</b>: {len(self.resources)} memory configurations, "
            f"{self.summary['conversations'].iloc[0] if len(self.summary) else 0} conversations, "
            f"agent reads {html.escape(read)} before each reply</p>"
        )
        return caption + str(self.summary.to_html(na_rep="—"))

    def plot(self, axes: Any = None) -> Any:
        """Two panels: mean tokens sent per agent turn by resource, and the trade-off between tokens sent per
        turn and recall (the share of the conversation the agent still saw). Returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(11, 4))
        per_turn, trade = axes
        for resource in self.resources:
            turns = self.turns[self.turns["resource"] == resource]
            mean = turns.groupby("turn")["tokens_sent"].mean()
            per_turn.plot(mean.index, mean.values, marker=".", label=resource)
            row = self.summary.loc[resource]
            trade.scatter(row["tokens_sent_mean"], row["recall_mean"], s=60)
            trade.annotate(
                resource, (row["tokens_sent_mean"], row["recall_mean"]), xytext=(5, 5), textcoords="offset points"
            )
        per_turn.set(
            xlabel="agent turn",
            ylabel="tokens sent (mean over conversations)",
            title="Tokens the agent is sent, per turn",
        )
        per_turn.legend()
        trade.set(
            xlabel="tokens sent per turn (mean)",
            ylabel="recall (mean)",
            title="Cost / recall trade-off",
            ylim=(0, 1.05),
        )
        return axes
