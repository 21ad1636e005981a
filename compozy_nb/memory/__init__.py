"""The engine: the 8 memory operations over Redis.

- :mod:`~compozy_nb.memory.operations`: the registry (each operation, its options, payload);
  :mod:`~compozy_nb.memory.outputs`: each operation's output map as a ``TypedDict``;
- :mod:`~compozy_nb.memory.instance` (``MemoryInstance``, sync) and :mod:`~compozy_nb.memory.aio` (``AsyncMemory``,
  async): the two transports over one engine; :mod:`~compozy_nb.memory.steps`: operations of several round trips;
- :mod:`~compozy_nb.memory.messages`, :mod:`~compozy_nb.memory.transcript`: the stored message, tool-call groups;
- :mod:`~compozy_nb.memory.flush`: flush planning; :mod:`~compozy_nb.memory.log`: the operation log;
- :mod:`~compozy_nb.memory.store`: Lua scripts and Redis errors; :mod:`~compozy_nb.memory.keys`: the key layout;
  :mod:`~compozy_nb.memory.scan`: listing instances; :mod:`~compozy_nb.memory.frames`: messages as DataFrames.
"""

__all__ = [
    "aio",
    "flush",
    "frames",
    "instance",
    "keys",
    "log",
    "messages",
    "operations",
    "outputs",
    "scan",
    "steps",
    "store",
    "transcript",
]
