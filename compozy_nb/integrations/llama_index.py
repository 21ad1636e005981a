"""LlamaIndex chat stores on compozy-nb (extra ``llama-index``).

- ``CompozyChatStore(project, ref, **key_vars)``: a ``BaseChatStore``, e.g. the ``chat_store`` of
  ``ChatMemoryBuffer``.
- ``CompozyDBChatStore(project, ref, **key_vars)``: an ``AsyncDBChatStore``, the ``chat_store`` of the newer
  ``llama_index.core.memory.Memory``; its ``ARCHIVED`` messages are the memory's archive.

A chat store key is the memory key, unless the resource's key template names ``{{.chat_store_key}}``
(``llama:{{.user_id}}:{{.chat_store_key}}``): then the template is rendered with ``key_vars`` and the chat
store key. Messages are stored in the OpenAI chat shape; :func:`to_openai` and :func:`from_openai` convert.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from compozy_nb.errors import ConfigError, InvalidPayloadError
from compozy_nb.integrations._common import KeyMap, Prototype, async_memory, atake, missing_extra, take

try:
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ImageBlock,
        MessageRole,
        TextBlock,
        ThinkingBlock,
        ToolCallBlock,
    )
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.storage.chat_store.base import BaseChatStore
    from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_extra("llama-index", "llama_index", exc) from exc

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance
    from compozy_nb.project import Project

__all__ = ["CompozyChatStore", "CompozyDBChatStore", "from_openai", "to_openai"]

_ROLE_ALIASES = {"chatbot": "assistant", "model": "assistant", "function": "tool"}


# ---------------------------------------------------------------------------------------------- conversion
def to_openai(message: ChatMessage, index: int = 0) -> dict[str, Any]:
    """A LlamaIndex ``ChatMessage`` as an OpenAI chat message dict (the shape compozy-nb stores).

    Text and image blocks become content (a string for one text block, else content parts), ``ToolCallBlock``
    blocks and ``additional_kwargs["tool_calls"]`` become ``tool_calls``; ``additional_kwargs["tool_call_id"]``
    and ``["name"]`` are kept. Thinking blocks are not stored.

    Raises:
        InvalidPayloadError: a block that cannot be stored (audio, video, documents), naming it.
    """
    role = str(message.role.value)
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.blocks):
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            url = str(block.url) if block.url is not None else block.inline_url()
            image: dict[str, Any] = {"url": url}
            if block.detail:
                image["detail"] = block.detail
            parts.append({"type": "image_url", "image_url": image})
        elif isinstance(block, ToolCallBlock):
            calls.append(_tool_call(block.tool_call_id, block.tool_name, block.tool_kwargs))
        elif not isinstance(block, ThinkingBlock):
            raise InvalidPayloadError(
                f"payload[{index}].blocks[{j}]: a {block.block_type!r} block cannot be stored "
                "(text, image and tool_call blocks can)",
                field=f"payload[{index}].blocks[{j}]",
            )
    extra = message.additional_kwargs
    calls += [_openai_call(call) for call in extra.get("tool_calls") or []]
    out: dict[str, Any] = {"role": _ROLE_ALIASES.get(role, role), "content": _content(parts, bool(calls))}
    if calls:
        out["tool_calls"] = calls
    for name in ("tool_call_id", "name"):
        if extra.get(name):
            out[name] = str(extra[name])
    return out


def _content(parts: list[dict[str, Any]], has_calls: bool) -> str | list[dict[str, Any]] | None:
    if not parts:
        return None if has_calls else ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _tool_call(call_id: str | None, name: str, kwargs: Any) -> dict[str, Any]:
    arguments = kwargs if isinstance(kwargs, str) else json.dumps(kwargs, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _openai_call(call: Any) -> dict[str, Any]:
    data: dict[str, Any] = call.model_dump() if hasattr(call, "model_dump") else dict(call)
    function = dict(data.get("function") or {})
    return {
        "id": data.get("id"),
        "type": "function",
        "function": {"name": function.get("name"), "arguments": function.get("arguments") or ""},
    }


_ROLES = {role.value: role for role in MessageRole}
_PLAIN_FIELDS = frozenset(("role", "content", "id", "tokens", "ts"))
# a text message is built from these (integrations/_common.py: cheaper than two validating constructors)
_TEXT_MESSAGE = Prototype(ChatMessage, role=MessageRole.USER)
_TEXT_BLOCK = Prototype(TextBlock, text="")


def from_openai(message: Mapping[str, Any]) -> ChatMessage:
    """A stored message (an OpenAI chat message dict, as ``read`` returns it) as a LlamaIndex ``ChatMessage``."""
    content = message.get("content")
    role = _ROLES.get(str(message.get("role", "user")), MessageRole.USER)
    if isinstance(content, str) and _PLAIN_FIELDS.issuperset(message):  # a text message: the common case
        return _TEXT_MESSAGE.build(role=role, blocks=[_TEXT_BLOCK.build(text=content)] if content else [])
    return _from_openai_full(role, message)


def _from_openai_full(role: MessageRole, message: Mapping[str, Any]) -> ChatMessage:
    blocks: list[Any] = []
    content = message.get("content")
    parts = content if isinstance(content, list) else message.get("content_parts")
    if isinstance(parts, list):
        blocks += [b for b in (_block(p) for p in parts) if b is not None]
    elif content:
        blocks.append(TextBlock(text=str(content)))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            kwargs: Any = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            kwargs = arguments
        if not isinstance(kwargs, dict):
            kwargs = arguments
        name = function.get("name") or ""
        blocks.append(ToolCallBlock(tool_call_id=call.get("id"), tool_name=name, tool_kwargs=kwargs))
    extra = {name: message[name] for name in ("tool_call_id", "name") if message.get(name)}
    return ChatMessage(role=role, blocks=blocks, additional_kwargs=extra)


def _block(part: Any) -> Any:
    if not isinstance(part, Mapping):
        return None
    if part.get("type") == "text":
        return TextBlock(text=str(part.get("text", "")))
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        url = image if isinstance(image, str) else image.get("url")
        detail = None if isinstance(image, str) else image.get("detail")
        return ImageBlock(url=url, detail=detail)
    return None


def _payload(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    return [to_openai(m, i) for i, m in enumerate(messages)]


def _messages(out: Mapping[str, Any]) -> list[ChatMessage]:
    return [from_openai(m) for m in out["messages"]]


def _window(max_tokens: int | None, last: int | None) -> dict[str, Any]:
    if max_tokens is not None and last is not None:
        raise ConfigError("give max_tokens or last, not both", field="max_tokens")
    return {"max_tokens": max_tokens, "last": last}


# ---------------------------------------------------------------------------------------------- BaseChatStore
class CompozyChatStore(BaseChatStore):
    """A LlamaIndex ``BaseChatStore`` over the memory instances of one compozy-nb resource.

    Args:
        project: The project (its backend and resources).
        ref: The memory resource: its limits, redaction, TTL and archive apply to every key.
        max_tokens: ``get_messages`` returns only the newest messages that fit this budget (one read, flat in
            history size; ``ChatMemoryBuffer`` then trims with its own tokenizer as usual).
        last: ``get_messages`` returns only the newest ``last`` messages.
        **key_vars: Variables of the key template (see the module docstring).
    """

    ref: str
    key_vars: dict[str, Any]
    max_tokens: int | None = None
    last: int | None = None
    _keys: KeyMap = PrivateAttr()

    def __init__(
        self,
        project: Project,
        ref: str,
        *,
        max_tokens: int | None = None,
        last: int | None = None,
        **key_vars: Any,
    ) -> None:
        _window(max_tokens, last)
        super().__init__(ref=ref, key_vars=key_vars, max_tokens=max_tokens, last=last)
        self._keys = KeyMap(project, ref, key_vars)

    @classmethod
    def class_name(cls) -> str:
        """The LlamaIndex class name."""
        return "CompozyChatStore"

    def memory(self, key: str) -> MemoryInstance:
        """The memory instance behind a chat store key (for ``to_pandas()``, ``stats()``, ``plot()``...)."""
        return self._keys.memory(key)

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Replace the messages of ``key`` (one atomic write)."""
        self.memory(key).write(_payload(messages))

    def get_messages(self, key: str) -> list[ChatMessage]:
        """The messages of ``key``, oldest first (the window when one was given); one read."""
        return _messages(self.memory(key).read(**_window(self.max_tokens, self.last)))

    def add_message(self, key: str, message: ChatMessage) -> None:
        """Append one message."""
        self.memory(key).append(_payload([message]))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Delete the memory of ``key`` (messages, archive, metadata). Returns None, like ``RedisChatStore``."""
        self.memory(key).delete()
        return None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at position ``idx`` (into the archive); None when there is none."""
        removed = take(self.memory(key), idx, idx, "delete_message")
        return from_openai(removed[0]) if removed else None

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Remove the newest message (into the archive); None when the memory is empty."""
        removed = take(self.memory(key), -1, -1, "delete_last_message")
        return from_openai(removed[0]) if removed else None

    def get_keys(self) -> list[str]:
        """The chat store keys with stored messages (SCAN)."""
        return self._keys.keys()

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """:meth:`set_messages` on the async path."""
        await async_memory(self.memory(key)).write(_payload(messages))

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        """:meth:`get_messages` on the async path."""
        return _messages(await async_memory(self.memory(key)).read(**_window(self.max_tokens, self.last)))

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        """:meth:`add_message` on the async path."""
        await async_memory(self.memory(key)).append(_payload([message]))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """:meth:`delete_messages` on the async path."""
        await async_memory(self.memory(key)).delete()
        return None

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """:meth:`delete_message` on the async path."""
        removed = await atake(self.memory(key), idx, idx, "delete_message")
        return from_openai(removed[0]) if removed else None

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """:meth:`delete_last_message` on the async path."""
        removed = await atake(self.memory(key), -1, -1, "delete_last_message")
        return from_openai(removed[0]) if removed else None

    async def aget_keys(self) -> list[str]:
        """:meth:`get_keys` in a worker thread (SCAN has no async path yet)."""
        return await asyncio.to_thread(self._keys.keys)


# ---------------------------------------------------------------------------------------------- AsyncDBChatStore
def _active_only(status: MessageStatus | None, operation: str) -> None:
    if status is not MessageStatus.ACTIVE:
        raise InvalidPayloadError(
            f"{operation}: only ACTIVE messages can be written; the archive (ARCHIVED) is filled by "
            "archive_oldest_messages, flushes and evictions",
            operation=operation,
            field="status",
        )


def _slice(items: list[ChatMessage], offset: int | None, limit: int | None) -> list[ChatMessage]:
    start = offset or 0
    return items[start:] if limit is None else items[start : start + limit]


class CompozyDBChatStore(AsyncDBChatStore):
    """A LlamaIndex ``AsyncDBChatStore`` (the ``chat_store`` of ``llama_index.core.memory.Memory``).

    ``ACTIVE`` messages are the memory's messages; ``ARCHIVED`` ones are its archive (what flushes, evictions
    and ``archive_oldest_messages`` removed; bounded by ``archive_max_messages``), oldest first.

    Args:
        project: The project (its backend and resources).
        ref: The memory resource.
        **key_vars: Variables of the key template (see the module docstring).
    """

    ref: str
    key_vars: dict[str, Any]
    _keys: KeyMap = PrivateAttr()

    def __init__(self, project: Project, ref: str, **key_vars: Any) -> None:
        super().__init__(ref=ref, key_vars=key_vars)
        self._keys = KeyMap(project, ref, key_vars)

    @classmethod
    def class_name(cls) -> str:
        """The LlamaIndex class name."""
        return "CompozyDBChatStore"

    def memory(self, key: str) -> MemoryInstance:
        """The memory instance behind a chat store key."""
        return self._keys.memory(key)

    async def get_messages(
        self,
        key: str,
        status: MessageStatus | None = MessageStatus.ACTIVE,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[ChatMessage]:
        """Messages of ``key`` with ``status`` (None: archived then active), oldest first."""
        mem = async_memory(self.memory(key))
        if status is MessageStatus.ACTIVE:
            return _messages(await mem.read(limit=limit, offset=offset or 0))
        archived = _messages(await mem.read(archive=True))[::-1]  # the archive is kept newest first
        if status is MessageStatus.ARCHIVED:
            return _slice(archived, offset, limit)
        return _slice(archived + _messages(await mem.read()), offset, limit)

    async def count_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE) -> int:
        """How many messages ``key`` has with ``status`` (None: both)."""
        mem = async_memory(self.memory(key))
        total = 0
        if status in (MessageStatus.ACTIVE, None):
            total += int((await mem.read(limit=0))["total_count"])
        if status in (MessageStatus.ARCHIVED, None):
            total += int((await mem.read(archive=True, limit=0))["total_count"])
        return total

    async def add_message(self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE) -> None:
        """Append one message (ACTIVE only)."""
        await self.add_messages(key, [message], status)

    async def add_messages(
        self, key: str, messages: list[ChatMessage], status: MessageStatus = MessageStatus.ACTIVE
    ) -> None:
        """Append messages in one atomic append (ACTIVE only)."""
        _active_only(status, "append")
        if messages:
            await async_memory(self.memory(key)).append(_payload(messages))

    async def set_messages(
        self, key: str, messages: list[ChatMessage], status: MessageStatus = MessageStatus.ACTIVE
    ) -> None:
        """Replace the ACTIVE messages (one atomic write)."""
        _active_only(status, "write")
        await async_memory(self.memory(key)).write(_payload(messages))

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the ACTIVE message at position ``idx`` (into the archive) and return it."""
        removed = await atake(self.memory(key), idx, idx, "delete_message")
        return from_openai(removed[0]) if removed else None

    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        """None: delete everything (messages, archive, metadata); ACTIVE: clear the messages, keep the archive."""
        mem = async_memory(self.memory(key))
        if status is None:
            await mem.delete()
        elif status is MessageStatus.ACTIVE:
            await mem.clear(confirm=True)
        else:
            raise InvalidPayloadError(
                "delete_messages: the archive alone cannot be deleted; delete everything (status=None)",
                operation="delete",
                field="status",
            )

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Remove the ``n`` oldest ACTIVE messages (into the archive) and return them."""
        return [from_openai(m) for m in await atake(self.memory(key), 0, n - 1, "delete")] if n > 0 else []

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Move the ``n`` oldest ACTIVE messages into the archive (one script, by exact bytes) and return them."""
        return [from_openai(m) for m in await atake(self.memory(key), 0, n - 1, "flush")] if n > 0 else []

    async def get_keys(self) -> list[str]:
        """The chat store keys with stored messages (SCAN, in a worker thread)."""
        return await asyncio.to_thread(self._keys.keys)
