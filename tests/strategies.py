"""Hypothesis strategies for memory payloads (attrs-style: one module, composable, documented).

Payloads follow the shape the memory operations accept: a message map, a list of maps, or a string (a user
message). Contents are built from a small vocabulary so token counts stay small and varied, with some
arbitrary unicode text. Explicit ids come from a small pool so that duplicate ids happen often.
"""

from __future__ import annotations

from typing import Any, Literal

from hypothesis import strategies as st

# No "tool": a tool message forms a tool-call group with the message before it (issue 12), which the state-machine
# model does not model; tests/engine/test_transcripts_groups.py covers groups in reads, eviction and flushes.
ROLES = ("user", "assistant", "system")
"""The roles Compozy accepts (its documented list, written here rather than imported from the package)."""

NON_SYSTEM_ROLES = ("user", "assistant")

BAD_ROLES = ("bot", "User", "SYSTEM", "human", "function", "", " user")  # "developer" is a valid role (OpenAI)
"""Roles outside the accepted list (case matters)."""

ID_POOL = ("m1", "m2", "m3", "m4", "m5", "m6", 7, 8, 'q"9', "b\\10", "ü11")
"""Explicit ids: strings and integers (stored as strings), some with a quote, a backslash or non-ASCII
(stored JSON the scripts must decode rather than pattern-match), few enough to collide often."""

WORDS = (
    "hello",
    "world",
    "the",
    "agent",
    "remembers",
    "a",
    "conversation",
    "about",
    "Redis",
    "memory",
    "tokens",
    "42",
    "3.14",
    "naïve",
    "café",
    "東京",
    "🚀",
    "—",
    "flush",
    "lists",
    "{json}",
    '"quoted"',
    "back\\slash",
    "tab\there",
    "new\nline",
    "ok!",
    "?",
    "user:",
    "system",
    "x" * 12,
)

_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # annotated: mypy infers a bare tuple literal as tuple[str]
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=_SURROGATES, max_codepoint=0x1FFFF), min_size=1, max_size=24
).filter(lambda s: s.strip() != "")


def words(max_words: int = 14) -> st.SearchStrategy[str]:
    """Contents made of 1..max_words vocabulary words (a few tokens each)."""
    return st.lists(st.sampled_from(WORDS), min_size=1, max_size=max_words).map(" ".join)


def contents(max_words: int = 14) -> st.SearchStrategy[str]:
    """Non-empty message contents (never whitespace only): mostly vocabulary words, sometimes any text."""
    plain = words(max_words)
    return st.one_of(plain, plain, plain, _TEXT)


def message_ids() -> st.SearchStrategy[str | int]:
    """An explicit message id from the small pool."""
    return st.sampled_from(ID_POOL)


def messages(roles: st.SearchStrategy[str] | None = None, max_words: int = 14) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message map.

    ``role`` may be left out (it defaults to ``user``); ``id`` is optional; an extra ``metadata`` field is
    kept verbatim; ``tokens`` and ``ts`` given in a payload must be ignored (they are computed).
    """
    role_strategy = roles if roles is not None else st.sampled_from(("user", "user", "assistant", "system"))
    return st.fixed_dictionaries(
        {"content": contents(max_words)},
        optional={
            "role": role_strategy,
            "id": message_ids(),
            "metadata": st.fixed_dictionaries({"n": st.integers(-5, 5), "tag": st.sampled_from(["a", "b"])}),
            "tokens": st.integers(0, 10_000),
            "ts": st.just("1999-01-01T00:00:00Z"),
        },
    )


def system_messages(max_words: int = 8) -> st.SearchStrategy[dict[str, Any]]:
    """A short valid system message (vocabulary words only) without explicit id."""
    return st.builds(lambda c: {"role": "system", "content": c}, words(max_words))


def payloads(max_batch: int = 4) -> st.SearchStrategy[Any]:
    """A valid payload: one message map, a list of 0..max_batch maps, or a plain string."""
    return st.one_of(
        messages(),
        st.lists(messages(), min_size=0, max_size=max_batch),
        contents(),
    )


def invalid_messages() -> st.SearchStrategy[dict[str, Any]]:
    """A message map that must be rejected with INVALID_PAYLOAD: a bad role, or a missing/blank/non-string
    content."""
    bad_role = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(BAD_ROLES), contents())
    bad_content = st.builds(
        lambda r, c: {"role": r} if c is None else {"role": r, "content": c},
        st.sampled_from(ROLES),
        st.sampled_from([None, "", " ", "\n\t ", 5, ["x"], {"text": "x"}]),
    )
    return st.one_of(bad_role, bad_content)


def invalid_payloads(max_batch: int = 3) -> st.SearchStrategy[Any]:
    """A payload with at least one invalid message among valid ones (the whole payload must be rejected)."""
    return st.one_of(
        invalid_messages(),
        st.builds(
            lambda before, bad, after: [*before, bad, *after],
            st.lists(messages(), max_size=max_batch),
            invalid_messages(),
            st.lists(messages(), max_size=max_batch),
        ),
    )


def repeated_words(min_words: int, max_words: int) -> st.SearchStrategy[str]:
    """One word repeated: a content whose token count grows with the number of words (large messages)."""
    return st.builds(
        lambda word, n: " ".join([word] * n),
        st.sampled_from(["word", "memory", "tokens", "Redis"]),
        st.integers(min_words, max_words),
    )


def oversized_content(min_tokens: int) -> st.SearchStrategy[str]:
    """A content whose token count is well above ``min_tokens`` (a few tokens per repeated word)."""
    return st.builds(
        lambda word, extra: " ".join([word] * (min_tokens + extra)),
        st.sampled_from(["word", "memory", "tokens", "Redis"]),
        st.integers(1, 40),
    )
