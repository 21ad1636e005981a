"""LangChain chat history on compozy-nb (extra ``langchain``).

``CompozyChatMessageHistory(mem)`` is a ``langchain_core.chat_history.BaseChatMessageHistory`` over one
:class:`compozy_nb.MemoryInstance`::

    history = CompozyChatMessageHistory(project.memory("conversation", "conv:u1:s1"), max_tokens=2000)
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])   # one atomic append
    history.messages                                                    # the newest 2,000 tokens

Messages are stored in the OpenAI chat shape (``role``/``content``, ``tool_calls``, ``tool_call_id``, content
parts), so Compozy and every other shell read them; :func:`to_openai` and :func:`from_openai` convert.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from compozy_nb.errors import ConfigError, InvalidPayloadError
from compozy_nb.integrations._common import Prototype, async_memory, missing_extra

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_extra("langchain", "langchain", exc) from exc

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance
    from compozy_nb.project import Project

__all__ = ["CompozyChatMessageHistory", "from_openai", "to_openai"]

_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_DEVELOPER = "__openai_role__"  # how langchain-openai marks a developer message on a SystemMessage


# ---------------------------------------------------------------------------------------------- conversion
def to_openai(message: BaseMessage, index: int = 0) -> dict[str, Any]:
    """A LangChain message as an OpenAI chat message dict (the shape compozy-nb stores).

    Raises:
        InvalidPayloadError: a message type with no OpenAI equivalent (naming ``payload[index]``).
    """
    role = _role(message, index)
    content = _content_to_openai(message.content)
    if role == "assistant" and isinstance(content, list):
        content = _assistant_parts(content)
    out: dict[str, Any] = {"role": role, "content": content}
    if isinstance(message, AIMessage):
        calls = [_tool_call_to_openai(c["id"], c["name"], c["args"]) for c in message.tool_calls]
        calls += [_tool_call_to_openai(c["id"], c["name"], c["args"]) for c in message.invalid_tool_calls]
        if calls:
            out["tool_calls"] = calls
            if out["content"] in ("", []):
                out["content"] = None
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    if isinstance(message.id, str) and message.id:
        out["id"] = message.id
    return out


def _role(message: BaseMessage, index: int) -> str:
    if isinstance(message, SystemMessage) and message.additional_kwargs.get(_DEVELOPER) == "developer":
        return "developer"
    if isinstance(message, ChatMessage):
        return _ROLE_OF_TYPE.get(message.role, message.role)
    role = _ROLE_OF_TYPE.get(message.type)
    if role is None:
        raise InvalidPayloadError(
            f"payload[{index}]: a LangChain {type(message).__name__} has no chat role compozy-nb stores "
            "(use HumanMessage, AIMessage, SystemMessage, ToolMessage or ChatMessage)",
            field=f"payload[{index}]",
        )
    return role


def _tool_call_to_openai(call_id: str | None, name: str | None, args: Any) -> dict[str, Any]:
    arguments = args if isinstance(args, str) or args is None else json.dumps(args, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or ""}}


def _content_to_openai(content: str | list[Any]) -> str | list[Any]:
    if isinstance(content, str):
        return content
    return [_part_to_openai(part) for part in content]


def _assistant_parts(parts: list[Any]) -> str | list[Any]:
    """An assistant's content keeps its text and refusal parts: tool-use blocks (Anthropic) are the message's
    ``tool_calls`` already, reasoning blocks are not stored. A single text part becomes a string."""
    kept = [p for p in parts if isinstance(p, Mapping) and p.get("type") in ("text", "refusal")]
    if len(kept) == 1 and kept[0]["type"] == "text":
        return str(kept[0]["text"])
    return kept


def _part_to_openai(part: Any) -> Any:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind == "image_url":
        image = part.get("image_url")
        return {"type": "image_url", "image_url": {"url": image} if isinstance(image, str) else dict(image or {})}
    if kind == "image":  # LangChain's standard block: a url, or base64 data with a MIME type
        url = part.get("url")
        data = part.get("base64") or part.get("data")
        if url is None and data is not None:
            url = f"data:{part.get('mime_type', 'image/png')};base64,{data}"
        if url is not None:
            return {"type": "image_url", "image_url": {"url": url}}
    return dict(part)


_PLAIN_FIELDS = frozenset(("role", "content", "id", "name", "tokens", "ts"))
# a text message is built from one of these (integrations/_common.py: ~3x cheaper than the constructor, which a
# read pays once per message)
_TEXT_PROTOTYPES: dict[str, Prototype[BaseMessage]] = {
    "user": Prototype(HumanMessage, content=""),
    "assistant": Prototype(AIMessage, content=""),
    "system": Prototype(SystemMessage, content=""),
}


def from_openai(message: Mapping[str, Any]) -> BaseMessage:
    """A stored message (an OpenAI chat message dict, as ``read`` returns it) as a LangChain message."""
    role = str(message.get("role", "user"))
    content = message.get("content")
    prototype = _TEXT_PROTOTYPES.get(role)
    if prototype is not None and isinstance(content, str) and _PLAIN_FIELDS.issuperset(message):
        return prototype.build(content=content, id=message.get("id"), name=message.get("name") or None)
    return _from_openai_full(role, message)


def _from_openai_full(role: str, message: Mapping[str, Any]) -> BaseMessage:
    content = _content_from_openai(message)
    common: dict[str, Any] = {"id": message.get("id")}
    if message.get("name"):
        common["name"] = message["name"]
    if role == "user":
        return HumanMessage(content=content, **common)
    if role == "assistant":
        calls, invalid = _tool_calls_from_openai(message.get("tool_calls") or [])
        return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid, **common)
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=str(message.get("tool_call_id") or ""), **common)
    if role == "system":
        return SystemMessage(content=content, **common)
    if role == "developer":
        return SystemMessage(content=content, additional_kwargs={_DEVELOPER: "developer"}, **common)
    return ChatMessage(content=content, role=role, **common)


def _content_from_openai(message: Mapping[str, Any]) -> str | list[Any]:
    content = message.get("content")
    parts = content if isinstance(content, list) else message.get("content_parts")
    if isinstance(parts, list):
        return [dict(p) if isinstance(p, Mapping) else p for p in parts]
    return "" if content is None else str(content)


def _tool_calls_from_openai(calls: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    valid: list[Any] = []
    invalid: list[Any] = []
    for call in calls:
        function = call.get("function") or {}
        name, arguments, call_id = function.get("name"), function.get("arguments") or "{}", call.get("id")
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            args = None
        if isinstance(args, dict):
            valid.append({"name": name, "args": args, "id": call_id, "type": "tool_call"})
        else:
            invalid.append({"name": name, "args": arguments, "id": call_id, "error": None, "type": "invalid_tool_call"})
    return valid, invalid


# ---------------------------------------------------------------------------------------------- history
class CompozyChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat history stored in one compozy-nb memory instance.

    Args:
        mem: The memory instance (``project.memory(ref, key)``): its limits, redaction, TTL and archive apply.
        max_tokens: ``messages`` returns only the newest messages that fit this token budget.
        last: ``messages`` returns only the newest ``last`` messages.

    Raises:
        ConfigError: both ``max_tokens`` and ``last`` given.
    """

    def __init__(self, mem: MemoryInstance, *, max_tokens: int | None = None, last: int | None = None) -> None:
        if max_tokens is not None and last is not None:
            raise ConfigError("give max_tokens or last, not both", field="max_tokens")
        super().__init__()
        self.memory = mem
        self.max_tokens = max_tokens
        self.last = last

    def __repr__(self) -> str:
        window = f", max_tokens={self.max_tokens}" if self.max_tokens is not None else ""
        window += f", last={self.last}" if self.last is not None else ""
        return f"CompozyChatMessageHistory({self.memory!r}{window})"

    def _window(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "last": self.last}

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The stored messages, oldest first (the budget or last-N window when one was given): one read."""
        return [from_openai(m) for m in self.memory.read(**self._window())["messages"]]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store ``messages`` in one atomic append (ids kept: a message whose id is stored is skipped)."""
        if messages:
            self.memory.append([to_openai(m, i) for i, m in enumerate(messages)])

    def clear(self) -> None:
        """Remove every message (the engine's ``clear``; the archive of flushed messages stays)."""
        self.memory.clear(confirm=True)

    async def aget_messages(self) -> list[BaseMessage]:
        """:attr:`messages` on the async path."""
        out = await async_memory(self.memory).read(**self._window())
        return [from_openai(m) for m in out["messages"]]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """:meth:`add_messages` on the async path."""
        if messages:
            await async_memory(self.memory).append([to_openai(m, i) for i, m in enumerate(messages)])

    async def aclear(self) -> None:
        """:meth:`clear` on the async path."""
        await async_memory(self.memory).clear(confirm=True)

    @classmethod
    def factory(
        cls,
        project: Project,
        ref: str,
        *,
        keys: Sequence[str] = ("session_id",),
        max_tokens: int | None = None,
        last: int | None = None,
    ) -> Callable[..., CompozyChatMessageHistory]:
        """A ``get_session_history`` for ``RunnableWithMessageHistory``: it takes the ``keys`` (by these names)
        and returns the history of the memory they select.

        With a key template on the resource (``conv:{{.user_id}}:{{.session_id}}``), the template is rendered
        with the values; without one, the single key's value is the memory key. For several keys, give the
        runnable matching ``history_factory_config`` fields.

        Raises:
            ConfigError: a key the template does not use (sessions would share a memory), or several keys
                without a template.
        """
        template = project.resource(ref).key
        names = tuple(keys)
        if not names:
            raise ConfigError("factory needs at least one key name", field="keys")
        unused = [n for n in names if template is not None and f".{n}" not in template]
        if unused or (template is None and len(names) > 1):
            raise ConfigError(
                f"memory resource {ref!r} has key template {template!r}, which does not use {unused or list(names)}"
                ": every session would share one memory",
                field="keys",
            )

        def get_session_history(*args: Any, **kwargs: Any) -> CompozyChatMessageHistory:
            values = {**dict(zip(names, args, strict=False)), **kwargs}
            if template is None:
                return cls(project.memory(ref, str(values[names[0]])), max_tokens=max_tokens, last=last)
            return cls(project.memory(ref, **values), max_tokens=max_tokens, last=last)

        parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
        get_session_history.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return get_session_history
