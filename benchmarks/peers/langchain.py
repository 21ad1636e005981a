"""``langchain``: langchain-community ``RedisChatMessageHistory(ttl=86400)`` + langchain-core ``trim_messages``
with the tiktoken counter of LangChain's how-to guide."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from compozy_nb.tokens import ensure_offline_vocab

from .base import BUDGET, ENCODING, FILL_BATCH, LAST, TTL_S, Subject, import_peer


def pairs(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """(role, content) of LangChain message objects."""
    roles = {"human": "user", "ai": "assistant"}
    return [(roles.get(m.type, m.type), str(m.content)) for m in messages]


def _load() -> tuple[Any, ...]:
    from langchain_community.chat_message_histories import RedisChatMessageHistory
    from langchain_core.messages import AIMessage, HumanMessage, message_to_dict, trim_messages

    return RedisChatMessageHistory, trim_messages, message_to_dict, HumanMessage, AIMessage


class LangChain(Subject):
    """LangChain: langchain-community ``RedisChatMessageHistory`` + langchain-core ``trim_messages``."""

    name, label = "langchain", "LangChain"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        loaded = import_peer(self, _load)
        if loaded is None:
            return
        self.History, self.trim_messages, self.message_to_dict, human, ai = loaded
        self.classes = {"user": human, "assistant": ai}
        self.token_counter = _langchain_tiktoken_counter()

    def connect(self, url: str) -> None:
        self.url = url
        self.histories: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return name  # the session id; the store key is key_prefix + session id

    def history(self, key: str) -> Any:
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = self.History(
                session_id=key, url=self.url, key_prefix=f"{self.prefix}lc:", ttl=TTL_S
            )
        return history

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        # the exact bytes RedisChatMessageHistory.add_message writes (LPUSH: newest first), in batches
        history = self.history(key)
        client = history.redis_client
        for start in range(0, len(messages), FILL_BATCH):
            chunk = messages[start : start + FILL_BATCH]
            client.lpush(history.key, *(json.dumps(self.message_to_dict(self.classes[r](content=c))) for r, c in chunk))
        client.expire(history.key, TTL_S)

    def append(self, key: str, role: str, content: str) -> None:
        self.history(key).add_message(self.classes[role](content=content))

    def read_last(self, key: str) -> list[tuple[str, str]]:
        # no "last n" either: .messages loads (and reverses) the whole list
        return pairs(self.history(key).messages[-LAST:])

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        trimmed = self.trim_messages(
            self.history(key).messages,
            max_tokens=BUDGET,
            strategy="last",
            token_counter=self.token_counter,
            start_on="human",
            include_system=True,
            allow_partial=False,
        )
        return pairs(trimmed)

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return pairs(self.history(key).messages)


def _langchain_tiktoken_counter() -> Callable[[list[Any]], int]:
    """The custom tiktoken token counter of LangChain's "how to trim messages" guide, with cl100k_base."""
    import tiktoken
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    ensure_offline_vocab()
    encoding = tiktoken.get_encoding(ENCODING)

    def str_token_counter(text: str) -> int:
        return len(encoding.encode(text))

    def tiktoken_counter(messages: list[Any]) -> int:
        num_tokens = 3  # every reply is primed with <|start|>assistant<|message|>
        tokens_per_message, tokens_per_name = 3, 1
        for msg in messages:
            if isinstance(msg, HumanMessage):
                role = "user"
            elif isinstance(msg, AIMessage):
                role = "assistant"
            elif isinstance(msg, ToolMessage):
                role = "tool"
            elif isinstance(msg, SystemMessage):
                role = "system"
            else:
                raise ValueError(f"Unsupported messages type {msg.__class__}")
            num_tokens += tokens_per_message + str_token_counter(role) + str_token_counter(msg.content)
            if msg.name:
                num_tokens += tokens_per_name + str_token_counter(msg.name)
        return num_tokens

    return tiktoken_counter
