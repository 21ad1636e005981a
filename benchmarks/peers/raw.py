"""``raw``: plain redis-py (hiredis), RPUSH + PEXPIRE in one pipeline, LRANGE + ``json.loads``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import redis

from .base import FILL_BATCH, LAST, TTL_S, Subject


class Raw(Subject):
    """Plain redis-py: the floor each ratio is measured against."""

    name, label = "raw", "raw redis-py"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.windows: dict[str, int] = {}  # key -> how many messages the budget read fetches

    def connect(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def key(self, name: str) -> str:
        return f"{self.prefix}raw:{name}"

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        for start in range(0, len(messages), FILL_BATCH):
            chunk = messages[start : start + FILL_BATCH]
            self.client.rpush(key, *(json.dumps({"role": r, "content": c}) for r, c in chunk))
        self.client.expire(key, TTL_S)

    def append(self, key: str, role: str, content: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps({"role": role, "content": content}))
        pipe.expire(key, TTL_S)
        pipe.execute()

    def _decode(self, raws: Iterable[bytes]) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in map(json.loads, raws)]

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return self._decode(self.client.lrange(key, -LAST, -1))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        # the floor: fetch exactly the newest n messages, n = what this project's budget read returns
        return self._decode(self.client.lrange(key, -self.windows[key], -1))

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return self._decode(self.client.lrange(key, 0, -1))
