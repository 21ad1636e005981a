"""Framework messages built from a validated prototype (integrations/_common.Prototype): the same objects the
constructors make, with their own mutable fields, and the constructor itself whenever a copy would differ."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import BaseModel, field_validator

from compozy_nb.integrations._common import Prototype


class Shouty(BaseModel):
    text: str = ""
    tags: list[str] = []

    @field_validator("text")
    @classmethod
    def upper(cls, value: str) -> str:
        return value.upper()


class Plain(BaseModel):
    text: str = ""
    tags: list[str] = []


def test_a_model_whose_constructor_transforms_values_is_always_constructed() -> None:
    shouty = Prototype(Shouty)
    assert [shouty.build(text=t).text for t in ("a", "b", "c")] == ["A", "B", "C"]


def test_copies_equal_constructed_models_and_own_their_containers() -> None:
    plain = Prototype(Plain)
    first, second, third = (plain.build(text=t) for t in ("x", "y", "z"))
    assert (second, third) == (Plain(text="y"), Plain(text="z"))
    assert second.model_fields_set == {"text"} and second.model_dump() == {"text": "y", "tags": []}
    second.tags.append("mine")
    assert third.tags == [] and first.tags == []


STORED: list[dict[str, Any]] = [
    {"role": "user", "content": "hello", "id": "m1", "tokens": 3, "ts": "2026-12-04T10:00:00.000Z"},
    {"role": "assistant", "content": "hi there", "id": "m2", "tokens": 4},
    {"role": "system", "content": "be brief", "id": "m3"},
    {"role": "user", "content": "", "id": "m4"},
]


def test_langchain_text_messages_match_the_constructors() -> None:
    from compozy_nb.integrations import langchain as lc

    for stored in STORED * 2:  # the second round is built from the prototypes
        quick: Any = lc.from_openai(stored)
        exact: Any = lc._from_openai_full(stored["role"], stored)
        assert quick == exact and quick.model_dump() == exact.model_dump()
    one: Any = lc.from_openai(STORED[1])
    two: Any = lc.from_openai(STORED[1])
    one.additional_kwargs["x"] = 1
    one.tool_calls.append({"name": "f", "args": {}, "id": "c1", "type": "tool_call"})
    assert two.additional_kwargs == {} and two.tool_calls == []


def test_llama_index_text_messages_match_the_constructors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compozy_nb.integrations import llama_index as li
    llama: Any = li  # llama_index's MessageRole, TextBlock, ChatMessage, imported there (not in its __all__)

    for stored in STORED * 2:
        quick: Any = li.from_openai(stored)
        role = llama.MessageRole(stored["role"])
        blocks = [llama.TextBlock(text=stored["content"])] if stored["content"] else []
        exact = llama.ChatMessage(role=role, blocks=blocks)
        assert quick == exact and quick.model_dump() == exact.model_dump() and quick.content == exact.content
    one: Any = li.from_openai(STORED[0])
    two: Any = li.from_openai(STORED[0])
    one.additional_kwargs["x"] = 1
    one.blocks.append(llama.TextBlock(text="more"))
    assert two.additional_kwargs == {} and len(two.blocks) == 1
