"""The fluent SDK: builders that produce exactly the models YAML produces, and print back as YAML.

mem = (MemoryResource("conversation_memory")
       .key("conv:{{.user_id}}:{{.session_id}}")
       .token_based(max_tokens=4000, max_messages=100)
       .ttl("24h")
       .redact(EMAIL)
       .non_persistable("system"))
wf = (Workflow("chatbot")
      .read_memory("read_history", "conversation_memory", output="conversation_history")
      .basic("generate_response", messages=[...], provider="scripted", replies=["Hi!"], output="ai_response")
      .append_memory("save_interaction", "conversation_memory", payload=[...]))
project.add(mem, wf)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from compozy_nb.config._yaml import Document, validate_document
from compozy_nb.config.memory import MemoryResource as MemoryResourceModel
from compozy_nb.config.workflow import Workflow as WorkflowModel

EMAIL = r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"
PHONE = r"\+?\b\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b"
SSN = r"\b\d{3}-\d{2}-\d{4}\b"
CREDIT_CARD = r"\b(?:\d[ -]?){13,16}\b"
IPV4 = r"\b(?:\d{1,3}\.){3}\d{1,3}\b"


class _Builder:
    """Shared: the data dict, validation through the YAML path, YAML printing."""

    _what = "resource"

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        """The document as it would be written in YAML."""
        result: dict[str, Any] = _plain(self._data)
        return result

    def to_yaml(self) -> str:
        """The document as YAML text (round-trips through the YAML loader to an equal model)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.to_yaml())

    def __repr__(self) -> str:
        return self.to_yaml()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class MemoryResource(_Builder):
    """Builds a memory resource (the same model as ``resource: memory`` YAML)."""

    _what = "memory resource"

    def __init__(self, id: str, description: str | None = None) -> None:
        super().__init__({"resource": "memory", "id": id, "description": description, "type": "buffer"})

    def key(self, template: str) -> MemoryResource:
        """The default key template, e.g. ``conv:{{.user_id}}:{{.session_id}}``."""
        self._data["key"] = template
        return self

    def token_based(
        self,
        max_tokens: int | None = None,
        max_messages: int | None = None,
        max_context_ratio: float | None = None,
    ) -> MemoryResource:
        """``type: token_based`` with its limits."""
        self._data.update(
            type="token_based",
            max_tokens=max_tokens,
            max_messages=max_messages,
            max_context_ratio=max_context_ratio,
        )
        return self

    def message_count_based(self, max_messages: int) -> MemoryResource:
        """``type: message_count_based``."""
        self._data.update(type="message_count_based", max_messages=max_messages)
        return self

    def buffer(self, max_tokens: int | None = None, max_messages: int | None = None) -> MemoryResource:
        """``type: buffer`` (optional limits)."""
        self._data.update(type="buffer", max_tokens=max_tokens, max_messages=max_messages)
        return self

    def ttl(self, duration: str) -> MemoryResource:
        """``persistence.ttl`` (``30s``, ``24h``, ``7d``, ``"0"`` for none)."""
        self._data["persistence"] = {"type": "redis", "ttl": duration}
        return self

    def model(self, name: str, provider: str = "openai") -> MemoryResource:
        """The model whose tokenizer counts tokens (``token_provider``)."""
        self._data["token_provider"] = {"provider": provider, "model": name}
        return self

    def _privacy(self) -> dict[str, Any]:
        policy: dict[str, Any] = self._data.setdefault("privacy_policy", {})
        return policy

    def redact(self, *patterns: str, replacement: str | None = None) -> MemoryResource:
        """Add redaction patterns (e.g. ``compozy_nb.sdk.EMAIL``)."""
        self._privacy().setdefault("redact_patterns", []).extend(patterns)
        if replacement is not None:
            self._privacy()["default_redaction_string"] = replacement
        return self

    def non_persistable(self, *roles: str) -> MemoryResource:
        """Roles never stored (``non_persistable_message_types``)."""
        self._privacy().setdefault("non_persistable_message_types", []).extend(roles)
        return self

    def flushing(self, type: str = "simple_fifo", **options: Any) -> MemoryResource:
        """``flushing`` (``summarize_threshold``, ``summary_tokens``, ``summarize_oldest_percent``,
        ``summarizer={"provider", "model"}``)."""
        self._data["flushing"] = {"type": type, **options}
        return self

    def option(self, name: str, value: Any) -> MemoryResource:
        """Any other field (``max_message_bytes``, ``archive_max_messages`` ...)."""
        self._data[name] = value
        return self

    def build(self) -> MemoryResourceModel:
        """The validated model (same errors as YAML, source ``<python>``)."""
        return validate_document(MemoryResourceModel, Document(self.to_dict(), "<python>"), what=self._what)


class Workflow(_Builder):
    """Builds a workflow (the same model as workflow YAML)."""

    _what = "workflow"

    def __init__(self, name: str, description: str | None = None, version: str | None = None) -> None:
        super().__init__({"name": name, "version": version, "description": description, "tasks": []})

    def input(self, required: Iterable[str] = (), **properties: str) -> Workflow:
        """Declare the input: ``.input(["user_id"], user_id="string", turns="integer")``."""
        self._data["input"] = {
            "type": "object",
            "properties": {k: {"type": v} for k, v in properties.items()},
            "required": list(required),
        }
        return self

    def memory(
        self, id: str, operation: str, memory_ref: str, key_template: str | None = None, **fields: Any
    ) -> Workflow:
        """Any memory task (``payload``, ``read_config``, ``output``, ``on_error`` ...)."""
        self._data["tasks"].append(
            {
                "id": id,
                "type": "memory",
                "operation": operation,
                "memory_ref": memory_ref,
                "key_template": key_template,
                **fields,
            }
        )
        return self

    def read_memory(self, id: str, memory_ref: str, key_template: str | None = None, **fields: Any) -> Workflow:
        """A ``read`` memory task."""
        return self.memory(id, "read", memory_ref, key_template, **fields)

    def append_memory(self, id: str, memory_ref: str, key_template: str | None = None, **fields: Any) -> Workflow:
        """An ``append`` memory task (give ``payload=``)."""
        return self.memory(id, "append", memory_ref, key_template, **fields)

    def basic(self, id: str, messages: list[dict[str, str]], provider: str = "scripted", **fields: Any) -> Workflow:
        """A ``basic`` (LLM) task."""
        self._data["tasks"].append({"id": id, "type": "basic", "provider": provider, "messages": messages, **fields})
        return self

    def output(self, **mapping: Any) -> Workflow:
        """The workflow output mapping (templates)."""
        self._data["output"] = mapping
        return self

    def build(self) -> WorkflowModel:
        """The validated model."""
        return validate_document(WorkflowModel, Document(self.to_dict(), "<python>"), what=self._what)
