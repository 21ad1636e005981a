"""Memory keys: Compozy's validation rules and the Redis key layout of one memory instance."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from compozy_nb.errors import InvalidKeyError

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_:\-@.*]{1,255}$")
# Compozy's own rule (its config resolver): ^[\w:\-@.]{1,256}$ with Go's ASCII \w, no leading/trailing "__".
# Ours allows a literal '*' that Compozy refuses: such a key works here but not in a Compozy deployment.
COMPOZY_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_:\-@.]{1,256}$")
_TEMPLATE_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_FORBIDDEN_CHAR = re.compile(r"[^A-Za-z0-9_:\-@.*]")
RESERVED_SUFFIXES = frozenset({"metadata", "archive", "ids", "access", "backups", "log"})


def validate_key(key: str) -> str:
    """Check a rendered memory key against Compozy's rules and return it.

    Rules: ``^[A-Za-z0-9_:\\-@.*]{1,255}$`` and no leading or trailing ``__``. ``*`` is a literal character.

    Raises:
        InvalidKeyError: naming the key and the broken rule.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"memory key must be a string, got {type(key).__name__}", key=repr(key))
    # shown in errors, and encodable: a lone surrogate ("k\ud800") becomes the text \ud800
    shown = (key if len(key) <= 80 else key[:77] + "...").encode("utf-8", "backslashreplace").decode("utf-8")
    if not key:
        raise InvalidKeyError("memory key is empty (did the key template render to nothing?)", key=key)
    bad = _FORBIDDEN_CHAR.search(key)
    if bad:  # before any encoding: a lone surrogate ("k\ud800") cannot be encoded as UTF-8
        char = bad.group(0)
        raise InvalidKeyError(
            f"invalid memory key {shown!r}: character {char!r} at position {bad.start()} is not allowed "
            "(allowed: letters, digits, '_', ':', '-', '@', '.', '*')",
            key=shown,
        )
    if len(key) > 255:
        raise InvalidKeyError(f"memory key too long: {len(key)} characters, at most 255 allowed", key=shown)
    if key.startswith("__") or key.endswith("__"):
        raise InvalidKeyError(f"invalid memory key {shown!r}: keys cannot start or end with '__'", key=shown)
    if key.rsplit(":", 1)[-1] in RESERVED_SUFFIXES or ":backup:" in key:
        raise InvalidKeyError(
            f"invalid memory key {shown!r}: a key may not end with ':{key.rsplit(':', 1)[-1]}' or contain "
            "':backup:' (those names hold another instance's metadata, archive, ids, access data or backups)",
            key=shown,
        )
    return key


def compozy_key_warning(key: str) -> str | None:
    """A warning when Compozy's key rule refuses a memory key that ours accepts (a literal ``*``), else None."""
    if COMPOZY_KEY_PATTERN.match(key) and not (key.startswith("__") or key.endswith("__")):
        return None
    return (
        f"memory key '{ascii(key)[1:-1]}' breaks Compozy's key rule ^[\\w:\\-@.]{{1,256}}$ (no '*'): "
        "a Compozy deployment sharing this Redis cannot read or write this memory"
    )


def key_template_warning(template: str) -> str | None:
    """A warning when the literal text of a key template (outside ``{{ }}``) has a character Compozy's key
    rule refuses (``*``): every key it renders is then unusable from Compozy."""
    literal = _TEMPLATE_ACTION.sub("", template)
    if "*" not in literal:
        return None
    return (
        f"key template '{ascii(template)[1:-1]}' contains '*', which Compozy's key rule ^[\\w:\\-@.]{{1,256}}$ "
        "refuses: a Compozy deployment sharing this Redis cannot read or write these memories"
    )


def project_key_warnings(project: Any) -> list[str]:
    """:func:`key_template_warning` for the default key of every memory resource and the key template of
    every memory task of a project (``compozy-nb validate`` prints them)."""
    found: list[tuple[str, str | None]] = [(f"memory '{r.id}'", r.key) for r in project.resources.values()]
    for workflow in project.workflows.values():
        found += [(f"workflow '{workflow.id}' task '{t.id}'", getattr(t, "key_template", None)) for t in workflow.tasks]
    warnings = []
    for where, template in found:
        warning = key_template_warning(template) if template else None
        if warning:
            warnings.append(f"{where}: {warning}")
    return warnings


@dataclass(frozen=True)
class KeyLayout:
    """Every Redis key of one memory instance.

    Standalone: ``compozy:{project}:memory:{key}`` (Compozy's layout). Cluster: the instance key is wrapped
    in a hash tag, ``compozy:{project}:memory:{<key>}``, so all keys of an instance share one slot.
    """

    project: str
    key: str
    cluster: bool = False

    @property
    def base(self) -> str:
        """The messages LIST (oldest first)."""
        inner = f"{{{self.key}}}" if self.cluster else self.key
        return f"compozy:{self.project}:memory:{inner}"

    @property
    def metadata(self) -> str:
        """The metadata HASH (``token_count``, ``message_count`` and our own fields)."""
        return f"{self.base}:metadata"

    @property
    def archive(self) -> str:
        """The archive LIST of flushed and evicted messages, newest first."""
        return f"{self.base}:archive"

    @property
    def ids(self) -> str:
        """The SET of stored message ids (idempotent appends)."""
        return f"{self.base}:ids"

    @property
    def access(self) -> str:
        """The ZSET of message id -> last access (ms), for LRU strategies."""
        return f"{self.base}:access"

    @property
    def backups(self) -> str:
        """The SET naming this instance's backup keys."""
        return f"{self.base}:backups"

    @property
    def log(self) -> str:
        """The capped STREAM of operation events (memory/log.py)."""
        return f"{self.base}:log"

    def backup(self, stamp: str) -> str:
        """The LIST holding one backup made by ``clear``."""
        return f"{self.base}:backup:{stamp}"

    @property
    def all_keys(self) -> list[str]:
        """The keys every write script receives, in the order the scripts expect."""
        return [self.base, self.metadata, self.archive, self.ids, self.access, self.backups, self.log]

    @staticmethod
    def pattern(project: str, key_pattern: str = "*", cluster: bool = False) -> str:
        """A SCAN MATCH pattern for message lists (metadata and auxiliary keys are filtered by caller)."""
        inner = f"{{{key_pattern}}}" if cluster else key_pattern
        return f"compozy:{project}:memory:{inner}"

    @staticmethod
    def is_auxiliary(redis_key: str) -> bool:
        """True for keys that are not a message list (metadata, archive, ids, access, backups)."""
        tail = redis_key.rsplit(":", 1)[-1]
        return tail in RESERVED_SUFFIXES or ":backup:" in redis_key

    @staticmethod
    def instance_key(project: str, redis_key: str) -> str:
        """The memory key of a message list's Redis key (the reverse of ``base``)."""
        inner = redis_key[len(f"compozy:{project}:memory:") :]
        if inner.startswith("{") and inner.endswith("}"):
            inner = inner[1:-1]
        return inner
