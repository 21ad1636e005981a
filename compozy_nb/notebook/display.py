"""HTML summaries of defined resources and workflows."""

from __future__ import annotations

from typing import Any

import yaml

from compozy_nb.config.durations import format_duration
from compozy_nb.config.workflow import BasicTask
from compozy_nb.results import html_table


class DefinitionSummary:
    """What a ``%%compozy`` cell (or ``list``/``show``/``load``) defined: resources and workflows."""

    def __init__(self, project: Any, ids: list[str], *, with_yaml: bool = False) -> None:
        self.project = project
        self.ids = list(ids)
        self.with_yaml = with_yaml

    def _memory_rows(self) -> list[dict[str, Any]]:
        rows = []
        for rid in self.ids:
            res = self.project.resources.get(rid)
            if res is None:
                continue
            privacy = res.privacy_policy
            rows.append(
                {
                    "id": res.id,
                    "type": res.type,
                    "key": res.key,
                    "max_tokens": res.token_limit,
                    "max_messages": res.max_messages,
                    "ttl": format_duration(res.persistence.ttl_seconds),
                    "flushing": res.flushing.type,
                    "privacy": (
                        f"{len(privacy.redact_patterns)} pattern(s), drops "
                        f"{', '.join(privacy.non_persistable_message_types) or 'no role'}"
                    )
                    if privacy
                    else "none",
                }
            )
        return rows

    def _workflow_tables(self) -> list[str]:
        out = []
        for wid in self.ids:
            wf = self.project.workflows.get(wid)
            if wf is None:
                continue
            rows = []
            for task in wf.tasks:
                if isinstance(task, BasicTask):
                    what = f"{task.provider}" + (f" {task.model}" if task.model else "")
                    mem = ", ".join(f"{m.id} ({m.mode})" for m in task.memory)
                    rows.append(
                        {
                            "task": task.id,
                            "type": "basic",
                            "what": what,
                            "memory / key": mem,
                            "output": task.output,
                        }
                    )
                else:
                    rows.append(
                        {
                            "task": task.id,
                            "type": "memory",
                            "what": f"{task.operation} {task.memory_ref}",
                            "memory / key": task.key_template,
                            "output": task.output,
                        }
                    )
            out.append(
                html_table(
                    rows,
                    ["task", "type", "what", "memory / key", "output"],
                    caption=f"workflow {wf.id}" + (f" v{wf.version}" if wf.version else ""),
                )
            )
        return out

    def _yaml(self) -> str:
        docs = []
        for rid in self.ids:
            if rid in self.project.resources:
                docs.append(self.project.resources[rid].to_yaml_dict())
            elif rid in self.project.workflows:
                docs.append(self.project.workflows[rid].model_dump(mode="json", exclude_defaults=True))
        return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)

    def _repr_html_(self) -> str:
        parts = []
        mem_rows = self._memory_rows()
        if mem_rows:
            parts.append(html_table(mem_rows, list(mem_rows[0]), caption="memory resources"))
        parts.extend(self._workflow_tables())
        if not parts:
            parts.append("<p>nothing defined yet</p>")
        if self.with_yaml:
            import html

            parts.append(f"<pre>{html.escape(self._yaml())}</pre>")
        return "".join(parts)

    def __repr__(self) -> str:
        names = ", ".join(self.ids) or "nothing"
        return f"compozy: {names}"
