"""Workflow files: ordered tasks (memory and basic), an optional input schema and output mapping."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compozy_nb.config.memory import PROVIDERS
from compozy_nb.config.task import MemoryTask

_JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array", "null"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ChatMessage(_Strict):
    """A message template of a basic task."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class AgentMemory(_Strict):
    """Compozy's agent memory: a memory read before the call and (read-write) appended after it."""

    id: str
    key: str | None = None
    mode: Literal["read-write", "read-only"] = "read-write"
    max_context_tokens: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, data: Any) -> Any:
        return {"id": data} if isinstance(data, str) else data


class BasicTask(_Strict):
    """A ``type: basic`` task: one LLM call."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    type: Literal["basic"]
    description: str | None = None
    provider: str = "scripted"
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    timeout: float = Field(60.0, gt=0)
    memory: list[AgentMemory] = Field(default_factory=list)
    base_url: str | None = None
    api_key_env: str | None = None
    function: str | None = None
    replies: list[str] | None = None
    reply_template: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tool_steps: int = Field(8, ge=0, le=64)
    output: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    on_error: Literal["fail", "continue"] = "fail"

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise ValueError(f"unknown provider '{value}', must be one of: {', '.join(PROVIDERS)}")
        return value

    @model_validator(mode="after")
    def _provider_fields(self) -> BasicTask:
        if self.provider == "scripted" and not self.replies and self.reply_template is None:
            raise ValueError("the scripted provider needs replies (a list) or reply_template")
        if self.provider == "python" and not (self.function or self.model):
            raise ValueError("the python provider needs function: the name of a registered callable")
        if self.provider == "openai" and not self.model:
            raise ValueError("the openai provider needs model")
        return self


class WorkflowMemoryTask(MemoryTask):
    """A memory task inside a workflow (``id`` required)."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    output: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


Task = Annotated[WorkflowMemoryTask | BasicTask, Field(discriminator="type")]


class InputSchema(_Strict):
    """A JSON-schema-like description of the workflow input (``type: object`` with properties)."""

    type: Literal["object"] = "object"
    properties: dict[str, dict[str, Any]] = Field(default_factory=dict)
    required: list[str] = Field(default_factory=list)
    additional_properties: bool = Field(True, alias="additionalProperties")

    @field_validator("properties")
    @classmethod
    def _types(cls, props: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, spec in props.items():
            kind = spec.get("type")
            if kind is not None and kind not in _JSON_TYPES:
                raise ValueError(f"properties.{name}.type '{kind}' is not one of {sorted(_JSON_TYPES)}")
        return props


class Workflow(_Strict):
    """A workflow file (``workflows/*.yaml``)."""

    resource: Literal["workflow"] = "workflow"
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-.]+$")
    version: str | None = None
    description: str | None = None
    input: InputSchema | None = None
    tasks: list[Task] = Field(min_length=1)
    output: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_or_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "id" not in data and "name" in data:
            data = dict(data)
            data["id"] = data.pop("name")
        elif isinstance(data, dict) and "name" in data:
            data = dict(data)
            if data["name"] != data["id"]:
                raise ValueError("give the workflow name once: 'name' or 'id' (they differ)")
            data.pop("name")
        return data

    @model_validator(mode="after")
    def _unique_ids(self) -> Workflow:
        seen: set[str] = set()
        outputs: set[str] = set()
        for task in self.tasks:
            if task.id in seen:
                raise ValueError(f"duplicate task id '{task.id}'")
            seen.add(task.id)
            if task.output:
                if task.output in outputs:
                    raise ValueError(f"duplicate task output name '{task.output}'")
                outputs.add(task.output)
        return self

    @property
    def name(self) -> str:
        """The workflow id (Compozy's ``name``)."""
        return self.id

    def task(self, task_id: str) -> WorkflowMemoryTask | BasicTask | None:
        """The task with ``task_id`` or None."""
        return next((t for t in self.tasks if t.id == task_id), None)
