"""The project: its resources, its backend, and the entry points every shell (CLI, magics, HTTP) uses."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compozy_nb.backends import Backend, connect
from compozy_nb.config._yaml import Document, load_documents, load_file
from compozy_nb.config.memory import MemoryResource
from compozy_nb.config.project import (
    ProjectSettings,
    autoload_files,
    load_settings,
    parse_memory,
    resource_kind,
)
from compozy_nb.config.task import MemoryTask
from compozy_nb.errors import ConfigError, MemoryNotFoundError, TemplateError
from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime, Output, run_operation
from compozy_nb.templating import render, render_value


class Project:
    """A set of memory resources (and, later, workflows) bound to one backend.

    Args:
        name: The project name: the ``{project}`` of ``compozy:{project}:memory:{key}``.
        redis_url: Backend URL; see :func:`compozy_nb.backends.connect` for the resolution order.
        settings: Parsed ``compozy.yaml``, when loaded from a directory.
        root: The project directory, when loaded from one.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        redis_url: str | None = None,
        settings: ProjectSettings | None = None,
        root: Path | None = None,
    ) -> None:
        self.settings = settings or ProjectSettings(name=name)
        self.name = self.settings.name
        self.root = root
        self._redis_url = redis_url
        self._backend: Backend | None = None
        self.resources: dict[str, MemoryResource] = {}
        self.sources: dict[str, str] = {}
        self._runtimes: dict[str, MemoryRuntime] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, directory: str | Path = ".", redis_url: str | None = None) -> Project:
        """Load ``compozy.yaml`` (optional) and the autoloaded resource files of ``directory``.

        Raises:
            ConfigError: with file:line for the first invalid file.
        """
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError(f"project directory {str(root)!r} does not exist", source=str(root))
        settings, _ = load_settings(root)
        project = cls(redis_url=redis_url, settings=settings, root=root)
        for path in autoload_files(root, settings.autoload):
            for doc in load_file(path):
                project.add_document(doc)
        return project

    def add_document(self, doc: Document, *, replace: bool = False) -> str:
        """Register one parsed YAML document; returns its id."""
        kind = resource_kind(doc)
        if kind == "memory":
            return self.add_memory(parse_memory(doc), source=doc.where(()), replace=replace)
        raise ConfigError(
            f"unsupported resource kind {kind!r} (expected 'memory')",
            source=doc.where(("resource",)),
            field="resource",
        )

    def add_yaml(self, text: str, source: str = "<yaml>", *, replace: bool = False) -> list[str]:
        """Register every document of a YAML string; nothing is registered if any document is invalid."""
        docs = load_documents(text, source)
        staged = Project(settings=self.settings)
        staged.resources = dict(self.resources)
        staged.sources = dict(self.sources)
        ids = [staged.add_document(doc, replace=replace) for doc in docs]
        for rid in ids:
            self.add_memory(staged.resources[rid], source=staged.sources[rid], replace=True)
        return ids

    def add_memory(self, resource: MemoryResource, *, source: str = "<python>", replace: bool = False) -> str:
        """Register a memory resource.

        Raises:
            ConfigError: an id already registered (unless ``replace``).
        """
        if resource.id in self.resources and not replace:
            raise ConfigError(
                f"memory resource '{resource.id}' is already defined at {self.sources[resource.id]}",
                source=source,
                field="id",
            )
        self.resources[resource.id] = resource
        self.sources[resource.id] = source
        self._runtimes.pop(resource.id, None)
        return resource.id

    # ------------------------------------------------------------------ backend
    @property
    def backend(self) -> Backend:
        """The backend, connected on first use."""
        if self._backend is None:
            self._backend = connect(self._redis_url, project_url=self.settings.redis.url)
        return self._backend

    def use_backend(self, backend: Backend) -> None:
        """Switch to an already connected backend."""
        self._backend = backend

    # ------------------------------------------------------------------ memory
    def resource(self, memory_ref: str) -> MemoryResource:
        """The resource registered under ``memory_ref`` (ids are matched case-insensitively, trimmed).

        Raises:
            MemoryNotFoundError: naming the known ids.
        """
        found = self.resources.get(memory_ref)
        if found is None:
            wanted = memory_ref.strip().casefold()
            found = next((r for rid, r in self.resources.items() if rid.casefold() == wanted), None)
        if found is None:
            known = ", ".join(sorted(self.resources)) or "none registered"
            raise MemoryNotFoundError(
                f"Memory resource not found: '{memory_ref}' (known: {known})", memory_ref=memory_ref
            )
        return found

    def runtime(self, memory_ref: str) -> MemoryRuntime:
        """The compiled runtime (tokenizer, privacy, summarizer) of a resource."""
        resource = self.resource(memory_ref)
        runtime = self._runtimes.get(resource.id)
        if runtime is None:
            runtime = MemoryRuntime(resource, summarizer=self._summarizer_for(resource))
            self._runtimes[resource.id] = runtime
        return runtime

    def _summarizer_for(self, resource: MemoryResource) -> Any:
        return None

    def memory(self, memory_ref: str, key: str | None = None, **variables: Any) -> MemoryInstance:
        """One memory instance: ``key`` as given, or the resource's key template rendered with ``variables``.

        Raises:
            MemoryNotFoundError, TemplateError, InvalidKeyError.
        """
        runtime = self.runtime(memory_ref)
        if key is None:
            template = runtime.resource.key
            if template is None:
                raise TemplateError(
                    f"memory resource '{runtime.resource.id}' has no default key template: pass key=...",
                    memory_ref=memory_ref,
                )
            key = render(template, template_context(variables))
        return MemoryInstance(runtime, key, self.backend, self.name)

    def execute(self, task: Mapping[str, Any] | MemoryTask, input: Mapping[str, Any] | None = None,
                *, workflow_id: str | None = None) -> dict[str, Any]:
        """Execute one memory task (the seed's execute request body) and return
        ``{"status": "completed", "output": {...}}``.

        Strings of the task (``key_template`` and ``payload``) are templates rendered with ``input`` (at top
        level and under ``.workflow.input`` / ``.input``).

        Raises:
            CompozyNbError: any failure; nothing is written.
        """
        body = dict(task) if isinstance(task, Mapping) else task.model_dump(exclude_none=True)
        data = dict(input if input is not None else body.pop("input", None) or {})
        body.pop("input", None)
        model = task if isinstance(task, MemoryTask) else _validate_task(body)
        context = template_context(data, workflow_id=workflow_id)
        output = self.run_task(model, context)
        return {"status": "completed", "output": output}

    def run_task(self, task: MemoryTask, context: Mapping[str, Any]) -> Output:
        """Render a memory task with ``context`` and run its operation."""
        runtime = self.runtime(task.memory_ref)
        template = task.key_template or runtime.resource.key
        if not template:
            raise TemplateError(
                f"key_template is required (memory resource '{runtime.resource.id}' has no default key)",
                field="key_template",
            )
        key = render(template, context)
        instance = MemoryInstance(runtime, key, self.backend, self.name)
        payload = render_value(task.payload, context, where="payload") if task.payload is not None else None
        return run_operation(instance, task.operation, payload, task.options())


def _validate_task(body: Mapping[str, Any]) -> MemoryTask:
    from pydantic import ValidationError

    from compozy_nb.config._yaml import Document, iter_errors

    try:
        return MemoryTask.model_validate(body)
    except ValidationError as exc:
        doc = Document(dict(body), "<request>")
        errors = list(iter_errors(exc, MemoryTask, doc))
        first = errors[0]
        message = first.message if len(errors) == 1 else "; ".join(e.message for e in errors)
        raise ConfigError(message, field=first.context.get("field")) from None


def template_context(variables: Mapping[str, Any], *, workflow_id: str | None = None,
                     exec_id: str | None = None, tasks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The variables templates see: the input at top level, plus ``workflow``, ``input`` and ``tasks``."""
    data = dict(variables)
    return {
        **data,
        "workflow": {"id": workflow_id or "adhoc", "exec_id": exec_id or uuid.uuid4().hex, "input": data},
        "input": data,
        "tasks": dict(tasks or {}),
    }
