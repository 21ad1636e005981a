"""The framework adapters as subjects of ``bench_peers.py``, next to the peers they replace.

- ``lc-adapter``: ``CompozyChatMessageHistory`` (LangChain): ``add_messages([msg])``,
  ``CompozyChatMessageHistory(mem, last=20).messages``, ``CompozyChatMessageHistory(mem, max_tokens=1000).messages``.
- ``li-adapter``: ``CompozyChatStore`` + ``ChatMemoryBuffer.from_defaults(token_limit=1000)`` (LlamaIndex):
  ``memory.put(ChatMessage)``, ``CompozyChatStore(..., last=20).get_messages(key)``, ``memory.get()`` over
  ``CompozyChatStore(..., max_tokens=1000)``.
- ``li-store``: ``CompozyChatStore`` alone: ``add_message``, ``get_messages`` with ``last=20`` / ``max_tokens=1000``.

Both store in the same ``buffer`` resource as the ``compozy_nb`` subject (no limit, ttl 24h), so the extra cost of
an adapter over the engine's own call is its conversion to the framework's message objects; the report's
"Adapters vs compozy_nb" table shows that ratio. Subjects follow ``bench_peers.Subject`` by duck typing (this module
is imported by bench_peers, not the other way round).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from compozy_nb.project import Project
from compozy_nb.sdk import MemoryResource

LAST = 20
BUDGET = 1_000
FILL_BATCH = 1_000
REF = "peers_adapters"


class _AdapterSubject:
    name = "?"
    label = "?"
    prefix = "?"
    skipped: str | None = None
    warnings: tuple[str, ...] = ()

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name
        self.instances: dict[str, Any] = {}

    def connect(self, url: str) -> None:
        self.project = Project(self.project_name, redis_url=url)
        self.project.add(MemoryResource(REF).buffer().ttl("24h"))
        self.instances = {}

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def mem(self, key: str) -> Any:
        mem = self.instances.get(key)
        if mem is None:
            mem = self.instances[key] = self.project.memory(REF, key)
        return mem

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        mem = self.mem(key)
        for start in range(0, len(messages), FILL_BATCH):
            mem.append([{"role": r, "content": c} for r, c in messages[start : start + FILL_BATCH]])

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in self.mem(key).read()["messages"]]


class LangChainAdapter(_AdapterSubject):
    """``CompozyChatMessageHistory`` over the engine."""

    name, label, prefix = "lc-adapter", "LangChain adapter", "lcadapter"

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        try:
            from langchain_core.messages import AIMessage, HumanMessage

            from compozy_nb.integrations.langchain import CompozyChatMessageHistory
        except ImportError as exc:
            self.skipped = f"not installed ({exc})"
            return
        self.History = CompozyChatMessageHistory
        self.classes: dict[str, Callable[..., Any]] = {"user": HumanMessage, "assistant": AIMessage}
        self.histories: dict[tuple[str, str], Any] = {}

    def connect(self, url: str) -> None:
        super().connect(url)
        self.histories = {}

    def history(self, key: str, window: str) -> Any:
        found = self.histories.get((key, window))
        if found is None:
            options = {"last": {"last": LAST}, "budget": {"max_tokens": BUDGET}, "all": {}}[window]
            found = self.histories[(key, window)] = self.History(self.mem(key), **options)
        return found

    @staticmethod
    def _pairs(messages: Iterable[Any]) -> list[tuple[str, str]]:
        roles = {"human": "user", "ai": "assistant"}
        return [(roles.get(m.type, m.type), str(m.content)) for m in messages]

    def append(self, key: str, role: str, content: str) -> None:
        self.history(key, "all").add_messages([self.classes[role](content=content)])

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.history(key, "last").messages)

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.history(key, "budget").messages)


class LlamaIndexAdapter(_AdapterSubject):
    """``CompozyChatStore`` + ``ChatMemoryBuffer`` over the engine."""

    name, label, prefix = "li-adapter", "LlamaIndex adapter", "liadapter"

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from llama_index.core.llms import ChatMessage
                from llama_index.core.memory import ChatMemoryBuffer

                from compozy_nb.integrations.llama_index import CompozyChatStore
        except ImportError as exc:
            self.skipped = f"not installed ({exc})"
            return
        self.ChatMessage, self.ChatMemoryBuffer, self.Store = ChatMessage, ChatMemoryBuffer, CompozyChatStore
        self.memories: dict[str, Any] = {}

    def connect(self, url: str) -> None:
        super().connect(url)
        self.all = self.Store(self.project, REF)
        self.last = self.Store(self.project, REF, last=LAST)
        self.budget = self.Store(self.project, REF, max_tokens=BUDGET)
        self.memories = {}

    def memory(self, key: str) -> Any:
        memory = self.memories.get(key)
        if memory is None:
            memory = self.memories[key] = self.ChatMemoryBuffer.from_defaults(
                chat_store=self.budget, chat_store_key=key, token_limit=BUDGET
            )
        return memory

    @staticmethod
    def _pairs(messages: Iterable[Any]) -> list[tuple[str, str]]:
        return [(str(m.role.value), str(m.content)) for m in messages]

    def append(self, key: str, role: str, content: str) -> None:
        self.memory(key).put(self.ChatMessage(role=role, content=content))

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.last.get_messages(key))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.memory(key).get())


class LlamaIndexStore(LlamaIndexAdapter):
    """``CompozyChatStore`` alone: the adapter's own reads, without ``ChatMemoryBuffer``'s re-tokenizing."""

    name, label, prefix = "li-store", "LlamaIndex adapter (store only)", "listore"

    def append(self, key: str, role: str, content: str) -> None:
        self.all.add_message(key, self.ChatMessage(role=role, content=content))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.budget.get_messages(key))


ADAPTERS = ("lc-adapter", "li-adapter", "li-store")


def subjects(project_name: str) -> list[Any]:
    """The adapter subjects, in report order."""
    return [LangChainAdapter(project_name), LlamaIndexAdapter(project_name), LlamaIndexStore(project_name)]


def report_lines(
    cases: Iterable[Any], sizes: Sequence[int], p50: Callable[[Any], float | None], fmt_ratio: Callable[[float], str]
) -> list[str]:
    """The "Adapters vs compozy_nb" section: each adapter's p50 ÷ the engine's own call, per operation and size."""
    by = {(c.operation, c.size, c.subject.name): c for c in cases}
    operations = list(dict.fromkeys(c.operation for c in by.values() if c.subject.name in ADAPTERS))
    if not operations:
        return []
    out = [
        "",
        "## Adapters vs compozy_nb",
        "",
        "Each adapter's p50 ÷ compozy_nb's own call (same run, same resource): what the framework interface adds "
        "on top of the engine: the conversion to LangChain / LlamaIndex message objects, and for the LlamaIndex "
        "adapter's budget read also `ChatMemoryBuffer.get()`, which re-tokenizes the window it is given with "
        "LlamaIndex's tokenizer (the *store only* column leaves it out). Flat across sizes = flat in history size.",
        "",
        "| operation | stored msgs | LangChain adapter | LlamaIndex adapter (ChatMemoryBuffer) | LlamaIndex adapter "
        "(store only) |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in operations:
        for size in sizes:
            engine = by.get((op, size, "compozy"))
            base = p50(engine) if engine else None
            cells = []
            for name in ADAPTERS:
                case = by.get((op, size, name))
                value = p50(case) if case else None
                cells.append(fmt_ratio(value / base) if value and base else "—")
            out.append(f"| {op} | {size:,} | " + " | ".join(cells) + " |")
    return out
