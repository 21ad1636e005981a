"""Definitions: pydantic models of the YAML documents, with ``file:line`` in every error.

- :mod:`~compozy_nb.config.memory`: the memory resource (limits, TTL, privacy, flushing), flush strategies and LLM
  providers;
- :mod:`~compozy_nb.config.task`: the memory task (its config blocks come from :mod:`compozy_nb.memory.operations`);
- :mod:`~compozy_nb.config.workflow`: workflows and basic tasks; :mod:`~compozy_nb.config.project`: ``compozy.yaml``;
- :mod:`~compozy_nb.config.durations`: ``24h``-style durations; ``_yaml``: the line-keeping loader.
"""

__all__ = ["durations", "memory", "project", "task", "workflow"]
