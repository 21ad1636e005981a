"""Drop-in memory for agent frameworks, each behind an optional extra.

- :mod:`compozy_nb.integrations.langchain` (extra ``langchain``): ``CompozyChatMessageHistory``, a LangChain
  ``BaseChatMessageHistory`` (also for ``RunnableWithMessageHistory`` and LangGraph nodes).
- :mod:`compozy_nb.integrations.llama_index` (extra ``llama-index``): ``CompozyChatStore`` (a ``BaseChatStore``
  for ``ChatMemoryBuffer``) and ``CompozyDBChatStore`` (an ``AsyncDBChatStore`` for ``Memory``).

Every adapter is a thin shell over one :class:`compozy_nb.MemoryInstance`: limits, redaction, TTL, the archive and
idempotent appends are the engine's, and each call is the engine's own call (no extra round trip).
"""

__all__ = ["langchain", "llama_index"]
