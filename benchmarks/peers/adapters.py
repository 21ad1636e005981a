"""This project's framework adapters as subjects, next to the peers they replace.

- ``lc-adapter``: ``CompozyChatMessageHistory`` (LangChain): ``add_messages([msg])``,
  ``CompozyChatMessageHistory(mem, last=20).messages``, ``CompozyChatMessageHistory(mem, max_tokens=1000).messages``.
- ``li-adapter``: ``CompozyChatStore`` + ``ChatMemoryBuffer.from_defaults(token_limit=1000)`` (LlamaIndex):
  ``memory.put(ChatMessage)``, ``CompozyChatStore(..., last=20).get_messages(key)``, ``memory.get()`` over
  ``CompozyChatStore(..., max_tokens=1000)``.
- ``li-store``: ``CompozyChatStore`` alone: ``add_message``, ``get_messages`` with ``last=20`` / ``max_tokens=1000``.

All store in their own ``buffer`` resource set up like the ``compozy_nb`` subject's (no limit, ttl 24h; the set-up,
fill and full read are ``Compozy``'s), so the extra cost of an adapter over the engine's own call is its conversion
to the framework's message objects; the report's "Adapters vs compozy_nb" table shows that ratio.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from . import langchain, llama_index
from .base import BUDGET, LAST
from .ours import Compozy

REF = "peers_adapters"


class LangChainAdapter(Compozy):
    """``CompozyChatMessageHistory`` over the engine."""

    name, label, ref, key_prefix = "lc-adapter", "LangChain adapter", REF, "lcadapter"

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

    def append(self, key: str, role: str, content: str) -> None:
        self.history(key, "all").add_messages([self.classes[role](content=content)])

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return langchain.pairs(self.history(key, "last").messages)

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return langchain.pairs(self.history(key, "budget").messages)


class LlamaIndexAdapter(Compozy):
    """``CompozyChatStore`` + ``ChatMemoryBuffer`` over the engine."""

    name, label, ref, key_prefix = "li-adapter", "LlamaIndex adapter", REF, "liadapter"

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

    def append(self, key: str, role: str, content: str) -> None:
        self.memory(key).put(self.ChatMessage(role=role, content=content))

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return llama_index.pairs(self.last.get_messages(key))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return llama_index.pairs(self.memory(key).get())


class LlamaIndexStore(LlamaIndexAdapter):
    """``CompozyChatStore`` alone: the adapter's own reads, without ``ChatMemoryBuffer``'s re-tokenizing."""

    name, label, key_prefix = "li-store", "LlamaIndex adapter (store only)", "listore"

    def append(self, key: str, role: str, content: str) -> None:
        self.all.add_message(key, self.ChatMessage(role=role, content=content))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return llama_index.pairs(self.budget.get_messages(key))


ADAPTERS = ("lc-adapter", "li-adapter", "li-store")


def subjects(project_name: str) -> list[Compozy]:
    """The adapter subjects, in report order."""
    return [LangChainAdapter(project_name), LlamaIndexAdapter(project_name), LlamaIndexStore(project_name)]
