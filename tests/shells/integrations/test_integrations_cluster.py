"""The framework adapters on a 3-primary Redis Cluster: hash-tagged keys, scripts on the key's node, SCAN on every
primary, the async cluster client on more than one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory

from compozy_nb.backends import Backend, connect
from compozy_nb.integrations.langchain import CompozyChatMessageHistory
from compozy_nb.integrations.llama_index import CompozyChatStore, CompozyDBChatStore
from compozy_nb.project import Project
from compozy_nb.sdk import MemoryResource
from tests.cluster import RedisCluster, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    yield from start_cluster()


@pytest.fixture
def project(cluster: RedisCluster) -> Iterator[Project]:
    cluster.flushall()
    backend: Backend = connect(cluster.url)
    project = Project("clu")
    project.use_backend(backend)
    project.add(MemoryResource("conv").key("conv:{{.session_id}}").buffer())
    yield project
    backend.close()


def test_langchain_history_on_a_cluster(project: Project) -> None:
    history = CompozyChatMessageHistory(project.memory("conv", session_id="s1"), last=2)
    history.add_messages([HumanMessage("one", id="a"), AIMessage("two", id="b"), HumanMessage("three", id="c")])
    assert [m.content for m in history.messages] == ["two", "three"]
    assert history.memory.layout.base == "compozy:clu:memory:{conv:s1}"
    for text in ("four", "five"):  # two event loops: the async cluster client follows the running one
        asyncio.run(history.aadd_messages([HumanMessage(text)]))
    assert [m.content for m in asyncio.run(history.aget_messages())] == ["four", "five"]


def test_llama_index_stores_on_a_cluster(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    for key in ("k1", "k2", "k3", "k4"):  # keys on different primaries
        store.set_messages(key, [ChatMessage(role="user", content=key), ChatMessage(role="assistant", content="ok")])
    assert store.get_keys() == ["k1", "k2", "k3", "k4"]
    assert store.delete_message("k3", 0) == ChatMessage(role="user", content="k3")
    assert store.get_messages("k3") == [ChatMessage(role="assistant", content="ok")]

    memory = Memory.from_defaults(session_id="m1", chat_store=CompozyDBChatStore(project, "conv"), token_limit=120)
    for i in range(8):
        memory.put(ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"turn {i} " + "word " * 12))
    mem = project.memory("conv", "m1")
    assert mem.read(archive=True)["total_count"] > 0
    assert len(memory.get_all()) == 8
