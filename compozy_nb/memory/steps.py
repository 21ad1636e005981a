"""Operations written once, run by two transports.

An operation that needs more than one round trip (stats, health, flush, adopting a foreign list) is a
generator of *steps*: it yields what it needs done - a Redis command, a batch of commands sent in one round
trip, one of our Lua scripts, or Python work too heavy for an event loop - and receives the result (or has
the exception thrown in at the ``yield``, so ordinary ``try``/``except`` works around a step). The logic,
its loops and its error handling live in the generator only; :class:`~compozy_nb.memory.instance.MemoryInstance`
runs the steps with the synchronous client, :class:`~compozy_nb.memory.aio.AsyncMemory` awaits them on
``redis.asyncio`` and sends :class:`Work` to a worker thread.

Example (how a transport drives one)::

    def stats_steps():
        meta, length = yield Batch("stats", (Call("hgetall", (meta_key,)), Call("llen", (list_key,))))
        return {"meta": meta, "length": length}
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

T = TypeVar("T")


class Call(NamedTuple):
    """One Redis command, ``client.<name>(*args)``.

    ``tolerate``: a server's error reply (an unknown or disabled command, say) is sent back as the exception
    object instead of being raised; connection errors are always raised.
    """

    name: str
    args: tuple[Any, ...] = ()
    tolerate: bool = False


class Batch(NamedTuple):
    """Commands sent in one round trip (a pipeline without MULTI); the result is the list of their replies.
    Errors become :class:`~compozy_nb.errors.CompozyNbError` naming ``operation``."""

    operation: str
    calls: tuple[Call, ...]


class Command(NamedTuple):
    """A single :class:`Call` with the error handling of a :class:`Batch`."""

    operation: str
    call: Call


class Script(NamedTuple):
    """One of our Lua scripts (``memory/scripts/<name>.lua``) on the instance's keys."""

    name: str
    args: tuple[Any, ...]
    operation: str
    strategy: str | None = None


class Work(NamedTuple):
    """Python work that is CPU-bound or blocking (decoding a whole list, planning a flush, calling a
    summarizer): run inline by the sync transport, in a worker thread by the async one."""

    func: Callable[[], Any]


Step: TypeAlias = Batch | Command | Script | Work
Steps = Generator[Step, Any, T]
"""A generator of steps whose return value is the operation's result."""


class Runner(Generic[T]):
    """The generator protocol, for transports: ``next()`` gives the step to run (``None`` once the operation
    returned, its value in :attr:`result`); report the step's outcome with :meth:`done` or :meth:`failed`
    (the exception is thrown in at the step's ``yield``, where the operation may handle it)."""

    __slots__ = ("_resume", "_steps", "_value", "result")

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self._resume: Callable[[Any], Step] = steps.send
        self._value: Any = None
        self.result: T | None = None

    def next(self) -> Step | None:
        try:
            return self._resume(self._value)
        except StopIteration as finished:
            self.result = finished.value
            return None

    def done(self, value: Any) -> None:
        self._resume, self._value = self._steps.send, value

    def failed(self, exc: Exception) -> None:
        self._resume, self._value = self._steps.throw, exc


__all__ = ["Batch", "Call", "Command", "Runner", "Script", "Step", "Steps", "Work"]
