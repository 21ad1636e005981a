"""A small synthetic-but-realistic conversation set for the what-if simulator.

A customer-support chatbot talks with a few users: short sessions (a question and an answer) and long ones (an
order problem that drags on), tool calls in the OpenAI shape (an assistant message with ``tool_calls``, then one
``tool`` message per call with its ``tool_call_id``), and personal data a privacy policy should redact (e-mail
addresses, phone numbers). Everything is derived from ``seed``: the same arguments give the same DataFrame.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["synthetic_conversations"]

_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_USERS = (
    ("alice", "alice.martin@example.com", "+1 415 555 0134"),
    ("bruno", "bruno.costa@example.org", "+55 11 5555 0199"),
    ("chen", "chen.wei@example.net", "+86 10 5555 0123"),
    ("dara", "dara.okafor@example.com", "+234 1 555 0147"),
    ("emil", "emil.larsen@example.org", "+45 32 555 0178"),
    ("fatima", "fatima.haddad@example.com", "+971 4 555 0162"),
)
_TOPICS = (
    ("order", "my order {ref} has not arrived yet", "get_order_status"),
    ("invoice", "the invoice {ref} shows the wrong amount", "get_invoice"),
    ("booking", "I need to move my booking {ref} to next week", "get_booking"),
    ("refund", "I was promised a refund for {ref}", "get_refund"),
)
_FOLLOW_UPS = (
    "Can you check again? It still says {status}.",
    "What does {status} mean exactly?",
    "How long will that take?",
    "Could you also send the details to {email}?",
    "My phone is {phone} if you need to call me.",
    "Is there anything else you need from me?",
    "Can I change the delivery address for {ref}?",
    "Thanks, and what about the other item in {ref}?",
    "I would prefer a short answer please.",
    "Please remind me what we agreed earlier.",
)
_ANSWERS = (
    "I checked {ref}: the status is {status}. I will keep an eye on it.",
    "{status} means the request is being processed by our team; it usually takes two to three working days.",
    "I have noted that. You will get an update as soon as {ref} changes status.",
    "Done: I updated {ref} and sent a confirmation.",
    "Understood. Here is a short summary: {ref} is {status}, and nothing else is needed from you.",
)
_STATUSES = ("in transit", "on hold", "awaiting approval", "processing", "ready for pickup")
_QUICK = (
    ("What are your opening hours?", "We answer chats from 8:00 to 20:00 UTC, Monday to Saturday."),
    ("Do you ship to Canada?", "Yes, we ship to Canada; delivery takes five to eight working days."),
    ("How do I reset my password?", "Use 'Forgot password' on the sign-in page; the link is valid for one hour."),
)


@dataclass
class _Session:
    """One conversation being generated."""

    conversation_id: str
    user: tuple[str, str, str]
    start: datetime
    rows: list[dict[str, Any]]
    tool_calls: bool

    def add(self, role: str, content: str, **fields: Any) -> None:
        turn = len(self.rows)
        when = self.start + timedelta(seconds=20 * turn)
        row = {
            "conversation_id": self.conversation_id,
            "user_id": self.user[0],
            "turn": turn,
            "role": role,
            "content": content,
            "ts": when,
            "tool_calls": None,
            "tool_call_id": None,
        }
        row.update(fields)
        self.rows.append(row)


def synthetic_conversations(
    users: int = 4,
    sessions_per_user: int = 3,
    *,
    long_turns: int = 24,
    tool_calls: bool = True,
    seed: int = 0,
) -> Any:
    """Generate support-chat conversations as a DataFrame, the input :func:`compozy_nb.simulate` takes.

    Each user has short sessions (one or two questions) and one long session of about ``long_turns`` agent
    turns about an order, an invoice, a booking or a refund, with personal data (e-mail, phone) in some user
    messages and, when ``tool_calls`` is true, a tool call on most agent turns of the long session.

    Args:
        users: How many users (at most 6).
        sessions_per_user: Sessions per user; the last one of each user is the long one.
        long_turns: Agent turns of a long session (at least 2).
        tool_calls: Include OpenAI-shaped tool calls (assistant ``tool_calls`` + ``tool`` messages).
        seed: Everything random is derived from it.

    Returns:
        A DataFrame with ``conversation_id``, ``user_id``, ``turn`` (order within the conversation), ``role``,
        ``content``, ``ts`` (UTC) and the tool-call fields ``tool_calls`` and ``tool_call_id``.
    """
    import pandas as pd

    if not 1 <= users <= len(_USERS):
        raise ValueError(f"users must be between 1 and {len(_USERS)}, got {users}")
    if sessions_per_user < 1 or long_turns < 2:
        raise ValueError("sessions_per_user must be at least 1 and long_turns at least 2")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for u, user in enumerate(_USERS[:users]):
        for s in range(sessions_per_user):
            start = _START + timedelta(days=s, hours=u)
            session = _Session(f"{user[0]}-s{s + 1}", user, start, [], tool_calls)
            if s == sessions_per_user - 1:
                _long_session(session, rng, long_turns)
            else:
                _short_session(session, rng)
            rows.extend(session.rows)
    return pd.DataFrame(rows)


def _short_session(session: _Session, rng: random.Random) -> None:
    for question, answer in rng.sample(_QUICK, rng.randint(1, 2)):
        session.add("user", question)
        session.add("assistant", answer)


def _long_session(session: _Session, rng: random.Random, turns: int) -> None:
    topic, opening, tool = rng.choice(_TOPICS)
    ref = f"{topic[:3].upper()}-{rng.randint(10000, 99999)}"
    name, email, phone = session.user
    values = {"ref": ref, "email": email, "phone": phone}
    session.add("user", f"Hi, I am {name.title()} ({email}). " + opening.format(**values) + ".")
    for turn in range(turns):
        values["status"] = rng.choice(_STATUSES)
        if session.tool_calls and turn % 4 != 3:
            _tool_call(session, tool, ref, values["status"], turn)
        session.add("assistant", rng.choice(_ANSWERS).format(**values))
        if turn < turns - 1:
            session.add("user", rng.choice(_FOLLOW_UPS).format(**values))


def _tool_call(session: _Session, tool: str, ref: str, status: str, turn: int) -> None:
    call_id = f"call_{session.conversation_id}_{turn}"
    call = {"id": call_id, "type": "function", "function": {"name": tool, "arguments": json.dumps({"ref": ref})}}
    session.add("assistant", f"Let me look up {ref}.", tool_calls=[call])
    session.add("tool", json.dumps({"ref": ref, "status": status}), tool_call_id=call_id)
