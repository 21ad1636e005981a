"""``compozy.yaml``: the project file, and autoload of resource files."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compozy_nb._secrets import HiddenStr, MaskedStr, is_secret_name
from compozy_nb.config._yaml import Document, load_file, validate_document
from compozy_nb.config.memory import MemoryResource
from compozy_nb.errors import ConfigError

PROJECT_FILE = "compozy.yaml"
DEFAULT_INCLUDE = ("memory/*.yaml", "memory/*.yml", "workflows/*.yaml", "workflows/*.yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RedisSettings(_Strict):
    """``redis``: where memories live (the URL is overridden by ``COMPOZY_REDIS_URL`` and explicit URLs), and how
    patient the client is: timeouts in seconds, retries with exponential backoff on connection errors only (a
    command that timed out may have run, so it is never re-sent)."""

    url: str | None = None
    connect_timeout: float = Field(5.0, gt=0)
    socket_timeout: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0, le=20)
    backoff_base: float = Field(0.05, gt=0)
    backoff_cap: float = Field(1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _masked_in_repr(cls, value: str | None) -> str | None:
        """Keep the URL as given, but with its password hidden wherever the settings are printed."""
        return MaskedStr(value) if value is not None else None


class AutoloadSettings(_Strict):
    """``autoload``: which files define resources."""

    enabled: bool = True
    strict: bool = Field(True, description="false: an invalid file is skipped with a warning instead of failing")
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)


class RunSettings(_Strict):
    """``runs``: what a run shows of the current turn."""

    redact: bool = Field(
        False,
        description="redact the prompt and reply in the run JSON (and the run's HTML view) with the privacy "
        "policies of the task's memories; off: they are shown as sent and received (stored messages are always "
        "redacted)",
    )


class ProjectSettings(_Strict):
    """The contents of ``compozy.yaml``."""

    name: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9_\-.]+$")
    version: str | None = None
    description: str | None = None
    redis: RedisSettings = Field(default_factory=RedisSettings)
    autoload: AutoloadSettings = Field(default_factory=AutoloadSettings)
    runs: RunSettings = Field(default_factory=RunSettings)
    models: list[dict[str, Any]] | dict[str, Any] | None = None
    providers: dict[str, Any] | None = None

    @field_validator("providers")
    @classmethod
    def _urls_masked_in_repr(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """A provider's ``base_url`` may hold ``user:token@``: hide it wherever the settings are printed."""
        if not value:
            return value
        return {name: _mask_strings(options) for name, options in value.items()}


def _mask_strings(value: Any, name: str = "") -> Any:
    """Strings that print masked: a credential-named value entirely, any other string as a URL."""
    if isinstance(value, str):
        return HiddenStr(value) if is_secret_name(name) and not name.endswith("_env") else MaskedStr(value)
    if isinstance(value, dict):
        return {k: _mask_strings(v, str(k)) for k, v in value.items()}
    return value


def load_settings(directory: Path) -> tuple[ProjectSettings, Document | None]:
    """Read ``compozy.yaml`` in ``directory`` (optional: defaults when absent)."""
    path = directory / PROJECT_FILE
    if not path.exists():
        return ProjectSettings(), None
    docs = load_file(path)
    if not docs:
        return ProjectSettings(), None
    if len(docs) > 1:
        raise ConfigError("compozy.yaml must hold one YAML document", source=f"{path}:{docs[1].start_line}")
    return validate_document(ProjectSettings, docs[0], what="project file"), docs[0]


def autoload_files(directory: Path, settings: AutoloadSettings) -> list[Path]:
    """Files matched by the include globs and not by the exclude globs, sorted."""
    if not settings.enabled:
        return []
    found: set[Path] = set()
    for pattern in settings.include:
        found.update(p for p in directory.glob(pattern) if p.is_file())
    kept = [
        p for p in found if not any(fnmatch.fnmatch(p.relative_to(directory).as_posix(), ex) for ex in settings.exclude)
    ]
    return sorted(kept)


def resource_kind(doc: Document) -> str | None:
    """The ``resource:`` of a document (``memory``, ``workflow`` ...) or None."""
    data = doc.data
    if isinstance(data, dict):
        kind = data.get("resource")
        if kind is None and "tasks" in data:
            return "workflow"
        return str(kind) if kind is not None else None
    return None


def parse_memory(doc: Document) -> MemoryResource:
    """Validate a document as a memory resource."""
    return validate_document(MemoryResource, doc, what="memory resource")
