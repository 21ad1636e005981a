"""``compozy_nb``: this project, ``Project.memory(ref, key)`` of a ``buffer`` resource (no limit, ttl 24h)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compozy_nb.project import Project
from compozy_nb.sdk import MemoryResource

from .base import BUDGET, FILL_BATCH, LAST, Subject


def pairs(out: Any) -> list[tuple[str, str]]:
    """(role, content) of a ``read`` result's messages."""
    return [(m["role"], m["content"]) for m in out["messages"]]


class Compozy(Subject):
    """This project: a ``buffer`` resource without limits (like the peers' stores), ttl 24h.

    ``ref`` names the resource and ``key_prefix`` starts each key; the framework adapters (``adapters.py``) reuse
    the set-up, fill and full read with their own."""

    name, label = "compozy", "compozy_nb"
    ref = "peers"
    key_prefix = "peers"

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name
        self.instances: dict[str, Any] = {}

    def connect(self, url: str) -> None:
        self.project = Project(self.project_name, redis_url=url)
        self.project.add(MemoryResource(self.ref).buffer().ttl("24h"))
        self.instances = {}

    def key(self, name: str) -> str:
        return f"{self.key_prefix}:{name}"

    def mem(self, key: str) -> Any:
        mem = self.instances.get(key)
        if mem is None:
            mem = self.instances[key] = self.project.memory(self.ref, key)
        return mem

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        mem = self.mem(key)
        for start in range(0, len(messages), FILL_BATCH):
            mem.append([{"role": r, "content": c} for r, c in messages[start : start + FILL_BATCH]])

    def append(self, key: str, role: str, content: str) -> None:
        self.mem(key).append({"role": role, "content": content})

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return pairs(self.mem(key).read(last=LAST))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return pairs(self.mem(key).read(max_tokens=BUDGET))

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return pairs(self.mem(key).read())
