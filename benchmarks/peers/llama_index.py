"""``llamaindex``: ``RedisChatStore(ttl=86400)`` + ``ChatMemoryBuffer.from_defaults(token_limit=1000)``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .base import BUDGET, FILL_BATCH, LAST, TTL_S, Subject, import_peer


def pairs(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """(role, content) of LlamaIndex ``ChatMessage`` objects."""
    return [(str(m.role.value), str(m.content)) for m in messages]


def _load() -> tuple[Any, Any, Any]:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.storage.chat_store.redis import RedisChatStore

    return ChatMessage, ChatMemoryBuffer, RedisChatStore


class LlamaIndex(Subject):
    """LlamaIndex: ``RedisChatStore`` + ``ChatMemoryBuffer`` (its default tiktoken tokenizer)."""

    name, label = "llamaindex", "LlamaIndex"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        loaded = import_peer(self, _load)
        if loaded is None:
            return
        self.ChatMessage, self.ChatMemoryBuffer, self.RedisChatStore = loaded

    def connect(self, url: str) -> None:
        self.store = self.RedisChatStore(redis_url=url, ttl=TTL_S)
        self.memories: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return f"{self.prefix}llama:{name}"

    def memory(self, key: str) -> Any:
        memory = self.memories.get(key)
        if memory is None:
            memory = self.memories[key] = self.ChatMemoryBuffer.from_defaults(
                chat_store=self.store, chat_store_key=key, token_limit=BUDGET
            )
        return memory

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        # the exact bytes RedisChatStore.add_message writes, pushed in batches to save set-up time
        client = self.store._redis_client
        for start in range(0, len(messages), FILL_BATCH):
            chunk = messages[start : start + FILL_BATCH]
            client.rpush(key, *(self.ChatMessage(role=r, content=c).model_dump_json() for r, c in chunk))
        client.expire(key, TTL_S)

    def append(self, key: str, role: str, content: str) -> None:
        self.memory(key).put(self.ChatMessage(role=role, content=content))

    def read_last(self, key: str) -> list[tuple[str, str]]:
        # BaseChatStore has no "last n": get_messages loads the whole list
        return pairs(self.store.get_messages(key)[-LAST:])

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return pairs(self.memory(key).get())

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return pairs(self.store.get_messages(key))
