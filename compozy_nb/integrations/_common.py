"""What the framework adapters share: extras, chat keys to memory keys, per-event-loop async memories, and
removing given stored messages into the archive."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from compozy_nb.memory.aio import AsyncMemory
from compozy_nb.memory.messages import decode, new_op_id, utc_now_iso
from compozy_nb.memory.store import ForeignDataError, redis_errors, script_source

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance
    from compozy_nb.project import Project

M = TypeVar("M")

KEY_VARIABLE = "chat_store_key"
MAX_CACHED = 1024  # memory instances kept per store; beyond, the cache starts over (an instance is cheap to make)


def missing_extra(extra: str, module: str, exc: ImportError) -> ImportError:
    """The ImportError raised when an adapter is imported without its extra."""
    return ImportError(
        f"compozy_nb.integrations.{module} needs the optional extra {extra!r} "
        f"(pip install 'compozy-nb[{extra}]'): {exc}"
    )


class KeyMap:
    """Chat store keys -> memory instances of one resource.

    The chat store key is the memory key, unless the resource's key template names ``{{.chat_store_key}}``:
    then the template is rendered with ``key_vars`` and ``chat_store_key``.
    """

    def __init__(self, project: Project, ref: str, key_vars: Mapping[str, Any]) -> None:
        self.project = project
        self.ref = project.resource(ref).id
        self.key_vars = dict(key_vars)
        template = project.resource(ref).key or ""
        self.templated = KEY_VARIABLE in template
        self._instances: dict[str, MemoryInstance] = {}

    def memory(self, chat_key: str) -> MemoryInstance:
        """The memory instance of one chat store key (made once, then reused)."""
        mem = self._instances.get(chat_key)
        if mem is None:
            if len(self._instances) >= MAX_CACHED:
                self._instances.clear()
            if self.templated:
                mem = self.project.memory(self.ref, **{**self.key_vars, KEY_VARIABLE: chat_key})
            else:
                mem = self.project.memory(self.ref, chat_key)
            self._instances[chat_key] = mem
        return mem

    def keys(self) -> list[str]:
        """The chat store keys stored in this project (SCAN, sorted)."""
        from compozy_nb.memory.scan import scan_keys

        if not self.templated:
            return sorted(scan_keys(self.project.backend, self.project.name))
        pattern = self.memory("*").key  # '*' is a literal in keys and the glob in SCAN
        head, _, tail = pattern.partition("*")
        found = scan_keys(self.project.backend, self.project.name, pattern)
        return sorted(k[len(head) : len(k) - len(tail)] for k in found if k.startswith(head) and k.endswith(tail))


# ---------------------------------------------------------------------------------------------- async
def async_memory(mem: MemoryInstance) -> AsyncMemory:
    """An :class:`AsyncMemory` of ``mem``; its connections belong to the running event loop (frameworks run their
    async code on short-lived loops: ``Backend.async_client`` keeps one client per loop)."""
    return AsyncMemory(mem)


# ---------------------------------------------------------------------------------------------- removal
def _flush_args(mem: MemoryInstance, raws: Sequence[bytes]) -> list[Any]:
    """The arguments of the engine's flush script removing exactly ``raws`` (no summary)."""
    resource = mem.resource
    args = [mem.runtime.ttl_ms, resource.archive_max_messages, utc_now_iso(), "", 0, "", mem.runtime.track, len(raws)]
    # the retry-safe engine takes an operation id first (a re-send after a lost reply returns the first result)
    return [new_op_id(), *args] if "ARGV: op," in script_source("flush") else args


def take(mem: MemoryInstance, start: int, stop: int, operation: str) -> list[dict[str, Any]]:
    """Remove the stored messages at positions ``start..stop`` (LRANGE bounds) into the archive, atomically.

    The messages are matched by their exact bytes (the engine's flush script), so messages appended meanwhile
    survive. Returns the removed messages, oldest first.
    """
    for attempt in range(2):
        with redis_errors(operation, mem.key):
            raws = list(mem.backend.client.lrange(mem.layout.base, start, stop))
        if not raws:
            return []
        try:
            mem._run("flush", [*_flush_args(mem, raws), *raws], operation)
        except ForeignDataError:
            if attempt:
                raise
            mem.adopt()
            continue
        break
    return [decode(raw, key=mem.key, position=start + i) for i, raw in enumerate(raws)]


async def atake(mem: MemoryInstance, start: int, stop: int, operation: str) -> list[dict[str, Any]]:
    """:func:`take` on the async path."""
    memory = async_memory(mem)
    for attempt in range(2):
        with redis_errors(operation, mem.key):
            raws = list(await memory.client.lrange(mem.layout.base, start, stop))
        if not raws:
            return []
        try:
            await memory._script("flush", [*_flush_args(mem, raws), *raws], operation)
        except ForeignDataError:
            if attempt:
                raise
            await memory.adopt()
            continue
        break
    return [decode(raw, key=mem.key, position=start + i) for i, raw in enumerate(raws)]


class Prototype(Generic[M]):
    """Framework messages (pydantic models) built by copying a validated prototype, for values known valid.

    A read converts every message it returns; the models' constructors validate each field again (LangChain's
    ``HumanMessage(content=...)`` ~12 µs, a copy of a prototype ~4 µs). ``build(**values)`` is what pydantic's
    ``model_copy(update=values)`` does, minus its overhead: the prototype's fields, ``values`` over them, fresh
    empty containers for its (empty) mutable defaults. The first build is checked against the constructor and
    the prototype is not used at all (every build calls the constructor) if they differ, e.g. after a change in
    pydantic or the framework.
    """

    def __init__(self, cls: type[M], **defaults: Any) -> None:
        self._cls = cls
        prototype = cls(**defaults)
        self._base: dict[str, Any] = dict(vars(prototype))
        self._fresh = [name for name, value in self._base.items() if isinstance(value, dict | list | set)]
        self._extra = getattr(prototype, "__pydantic_extra__", None)
        # None: checked at the first build; False (always construct): private state, or non-empty mutable defaults
        usable = not getattr(prototype, "__pydantic_private__", None) and not any(self._base[n] for n in self._fresh)
        self._usable: bool | None = None if usable else False

    def build(self, **values: Any) -> M:
        """A message with ``values`` (validated by the caller's types: strings, ids, roles)."""
        if self._usable is None:
            quick = self._copy(values)
            exact = self._cls(**values)
            self._usable = quick == exact and _dump(quick) == _dump(exact)
            return exact
        if not self._usable:
            return self._cls(**values)
        return self._copy(values)

    def _copy(self, values: dict[str, Any]) -> M:
        fields = {**self._base, **values}
        for name in self._fresh:
            if name not in values:
                fields[name] = type(fields[name])()
        message: Any = _new(self._cls)
        _set(message, "__dict__", fields)
        _set(message, "__pydantic_fields_set__", set(values))
        _set(message, "__pydantic_extra__", None if self._extra is None else {})
        _set(message, "__pydantic_private__", None)
        return message  # type: ignore[no-any-return]


_new = object.__new__
_set = object.__setattr__


def _dump(model: Any) -> Any:
    return model.model_dump() if hasattr(model, "model_dump") else vars(model)
