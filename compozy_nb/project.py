"""The project: its resources, its backend, and the entry points every shell (CLI, magics, HTTP) uses."""

from __future__ import annotations

import asyncio
import html
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from compozy_nb.backends import Backend, ConnectOptions, connect
from compozy_nb.config._yaml import Document, load_documents, load_file, validate_document
from compozy_nb.config.memory import MemoryResource
from compozy_nb.config.project import (
    ProjectSettings,
    autoload_files,
    load_settings,
    parse_memory,
    resource_kind,
)
from compozy_nb.config.task import MemoryTask
from compozy_nb.config.workflow import BasicTask, Workflow
from compozy_nb.errors import CompozyNbError, ConfigError, ErrorCode, MemoryNotFoundError, TemplateError
from compozy_nb.memory.aio import AsyncMemory
from compozy_nb.memory.flush import Summarizer, truncate_tokens
from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime, Output
from compozy_nb.memory.outputs import StatsOutput
from compozy_nb.results import RunResult
from compozy_nb.templating import render_key
from compozy_nb.workflow import runner
from compozy_nb.workflow.providers import ChatRequest, F, Registry, complete

M = TypeVar("M", bound=BaseModel)
_ANY_RESOURCE = MemoryResource(id="any", type="buffer", description="limits unknown: listing by pattern")


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
        self._backend_lock = threading.Lock()
        self.resources: dict[str, MemoryResource] = {}
        self.sources: dict[str, str] = {}
        self.workflows: dict[str, Workflow] = {}
        self.workflow_docs: dict[str, Document] = {}
        self._runtimes: dict[str, MemoryRuntime] = {}
        self.llms = Registry()
        self.load_warnings: list[str] = []

    # ------------------------------------------------------------------ display
    @property
    def namespace(self) -> str:
        """The Redis key prefix of this project's memories: ``compozy:{name}:memory:``."""
        return f"compozy:{self.name}:memory:"

    def describe(self) -> dict[str, Any]:
        """Name, namespace, backend (password masked; ``not connected yet`` before first use), directory,
        resource and workflow ids."""
        backend = self._backend
        return {
            "name": self.name,
            "namespace": self.namespace + "*",
            "backend": f"{backend.display_url} ({backend.kind})" if backend else "not connected yet",
            "root": str(self.root) if self.root else None,
            "resources": sorted(self.resources),
            "workflows": sorted(self.workflows),
        }

    def __repr__(self) -> str:
        info = self.describe()
        return (
            f"Project({self.name!r}, namespace={info['namespace']!r}, backend={info['backend']!r}, "
            f"resources={info['resources']}, workflows={info['workflows']})"
        )

    def _repr_html_(self) -> str:
        from compozy_nb.notebook.display import DefinitionSummary

        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in self.describe().items()
            if k not in ("resources", "workflows")
        )
        summary = DefinitionSummary(self, [*self.resources, *self.workflows])._repr_html_()
        return f"<table><caption style='text-align:left'><b>project</b></caption>{rows}</table>{summary}"

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
        project = cls.load_unchecked(root, redis_url=redis_url)
        problems = project.validate()
        if problems:
            raise problems[0]
        return project

    @classmethod
    def load_unchecked(cls, directory: str | Path = ".", redis_url: str | None = None) -> Project:
        """Load files without the cross-checks of :meth:`validate` (the CLI's ``validate`` reports them all)."""
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError(f"project directory {str(root)!r} does not exist", source=str(root))
        settings, _ = load_settings(root)
        project = cls(redis_url=redis_url, settings=settings, root=root)
        for path in autoload_files(root, settings.autoload):
            try:
                for doc in load_file(path):
                    project.add_document(doc)
            except ConfigError as exc:
                if settings.autoload.strict:
                    raise
                project.load_warnings.append(f"skipped {path}: {exc}")
                print(f"compozy-nb: autoload.strict is false, skipped {path}: {exc}", file=sys.stderr)
        return project

    def validate(self) -> list[ConfigError]:
        """Cross-checks of every workflow (unknown memory refs, references to unknown task outputs)."""
        problems: list[ConfigError] = []
        for wid, workflow in self.workflows.items():
            problems.extend(runner.check_workflow(workflow, self, self.workflow_docs.get(wid)))
        return problems

    def add_document(self, doc: Document, *, replace: bool = False) -> str:
        """Register one parsed YAML document (memory resource or workflow); returns its id."""
        kind = resource_kind(doc)
        if kind == "memory":
            return self.add_memory(parse_memory(doc), source=doc.where(("id",)), replace=replace)
        if kind == "workflow":
            workflow = validate_document(Workflow, doc, what="workflow")
            return self.add_workflow(workflow, doc=doc, replace=replace)
        if kind is None and isinstance(doc.data, dict) and "name" in doc.data:
            self.settings = validate_document(ProjectSettings, doc, what="project settings")
            self.name = self.settings.name
            return f"project:{self.name}"
        raise ConfigError(
            f"unsupported resource kind {kind!r} (expected 'memory' or 'workflow' (a workflow has tasks), "
            "or project settings with a 'name')",
            source=doc.where(("resource",)),
            field="resource",
        )

    def add_yaml(self, text: str, source: str = "<yaml>", *, replace: bool = False) -> list[str]:
        """Register every document of a YAML string; nothing is registered if any document is invalid
        (including a workflow that references an unknown memory or task output)."""
        docs = load_documents(text, source)
        staged = Project(settings=self.settings)
        staged.resources = dict(self.resources)
        staged.sources = dict(self.sources)
        staged.workflows = dict(self.workflows)
        staged.workflow_docs = dict(self.workflow_docs)
        ids = [staged.add_document(doc, replace=replace) for doc in docs]
        if staged.settings is not self.settings:
            self.settings, self.name = staged.settings, staged.name
        for wid in ids:
            if wid in staged.workflows and staged.workflows[wid] is not self.workflows.get(wid):
                problems = runner.check_workflow(staged.workflows[wid], staged, staged.workflow_docs.get(wid))
                if problems:
                    raise problems[0]
        for rid in ids:
            if rid in staged.resources and staged.resources[rid] is not self.resources.get(rid):
                self.add_memory(staged.resources[rid], source=staged.sources[rid], replace=True)
            if rid in staged.workflows and staged.workflows[rid] is not self.workflows.get(rid):
                self.add_workflow(staged.workflows[rid], doc=staged.workflow_docs.get(rid), replace=True)
        return ids

    def add(self, *definitions: Any, replace: bool = False) -> list[str]:
        """Register SDK builders or models (:class:`compozy_nb.MemoryResource`, :class:`compozy_nb.Workflow`,
        or their config models), all or nothing, with the same checks as YAML."""
        docs = []
        for item in definitions:
            data = (
                item.to_dict()
                if hasattr(item, "to_dict")
                else item.model_dump(mode="json", by_alias=True, exclude_none=True)
            )
            docs.append(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return self.add_yaml("---\n".join(docs), source="<python>", replace=replace)

    def add_workflow(self, workflow: Workflow, *, doc: Document | None = None, replace: bool = False) -> str:
        """Register a workflow.

        Raises:
            ConfigError: an id already registered (unless ``replace``).
        """
        if workflow.id in self.workflows and not replace:
            first = self.workflow_docs.get(workflow.id)
            raise ConfigError(
                f"workflow '{workflow.id}' is already defined" + (f" at {first.where(())}" if first else ""),
                source=(doc.where(("name",)) if "name" in doc.data else doc.where(("id",))) if doc else None,
                field="name",
            )
        self.workflows[workflow.id] = workflow
        if doc is not None:
            self.workflow_docs[workflow.id] = doc
        return workflow.id

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
        """The backend, connected on first use.

        Thread-safe: threads racing for the first use connect once (the others wait for that connection);
        a connection that fails is tried again at the next use.

        Raises:
            BackendError: Redis cannot be reached.
        """
        backend = self._backend
        if backend is None:
            with self._backend_lock:
                if self._backend is None:
                    redis = self.settings.redis
                    options = ConnectOptions(
                        connect_timeout=redis.connect_timeout,
                        socket_timeout=redis.socket_timeout,
                        retries=redis.retries,
                        backoff_base=redis.backoff_base,
                        backoff_cap=redis.backoff_cap,
                    )
                    self._backend = connect(self._redis_url, project_url=redis.url, options=options)
                backend = self._backend
        return backend

    def use_backend(self, backend: Backend) -> None:
        """Switch to an already connected backend."""
        with self._backend_lock:
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

    def _summarizer_for(self, resource: MemoryResource) -> Summarizer | None:
        config = resource.flushing.summarizer
        if config is None:
            return None
        provider, model = config.provider, config.model

        def summarize(messages: Any, previous: str | None, max_tokens: int) -> str:
            lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
            prompt = [
                {
                    "role": "system",
                    "content": "Summarize the conversation below for an assistant's memory. "
                    f"Keep facts, names, decisions and open questions. At most {max_tokens} tokens.",
                },
                {
                    "role": "user",
                    "content": (f"Earlier summary:\n{previous}\n\n" if previous else "")
                    + "Conversation:\n"
                    + "\n".join(lines),
                },
            ]
            options = {"function": model} if provider == "python" else {}
            options.update({k: v for k, v in self.provider_defaults(provider).items() if k != "model"})
            reply = complete(
                provider,
                ChatRequest(prompt, model, 0.0, max_tokens, 60.0, options),
                self.llms,
                f"summarizer/{resource.id}",
            )
            return truncate_tokens(reply.content, self.runtime(resource.id).counter, max_tokens)

        return summarize

    def provider_defaults(self, provider: str) -> dict[str, Any]:
        """Defaults for a provider from ``compozy.yaml`` (``providers: {openai: {base_url, api_key_env,
        model}}``)."""
        providers = self.settings.providers or {}
        value = providers.get(provider)
        return dict(value) if isinstance(value, dict) else {}

    def llm(self, name: str) -> Callable[[F], F]:
        """Register a Python function as an LLM (``provider: python``, ``function: name``)::

        @project.llm("echo")
        def echo(messages): return "you said: " + messages[-1]["content"]
        """
        return self.llms.register(name)

    def tool(self, name: str) -> Callable[[F], F]:
        """Register a Python function as a tool that ``basic`` tasks run when the model calls ``name``::

        @project.tool("get_weather")
        def get_weather(city): return {"city": city, "celsius": 18}
        """
        return self.llms.register_tool(name)

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
            key = render_key(template, runner.base_context("adhoc", variables, uuid.uuid4().hex), "key")
        return MemoryInstance(runtime, key, self.backend, self.name)

    def amemory(self, memory_ref: str, key: str | None = None, **variables: Any) -> AsyncMemory:
        """:meth:`memory` for async code: the same instance behind
        :class:`~compozy_nb.memory.aio.AsyncMemory`, whose 8 operations are awaitable
        (``await project.amemory("conversation", key="user:42").append("hi")``).

        Raises:
            MemoryNotFoundError, TemplateError, InvalidKeyError.
        """
        return AsyncMemory(self.memory(memory_ref, key, **variables))

    def execute(
        self,
        task: Mapping[str, Any] | MemoryTask,
        input: Mapping[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
    ) -> dict[str, Any]:
        """Execute one memory task (the seed's execute request body) and return
        ``{"status": "completed", "output": {...}}``.

        Strings of the task (``key_template`` and ``payload``) are templates rendered with ``input`` (at top
        level and under ``.workflow.input`` / ``.input``).

        Raises:
            CompozyNbError: any failure; nothing is written.
        """
        model, context, wid = self._execution(task, input, workflow_id)
        if isinstance(model, BasicTask):
            return {"status": "completed", "output": runner.run_basic_task(self, model, context, wid)}
        return {"status": "completed", "output": self.run_task(model, context)}

    async def aexecute(
        self,
        task: Mapping[str, Any] | MemoryTask,
        input: Mapping[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`execute` on the event loop: the operation over ``AsyncMemory``, a ``basic`` task's LLM over
        an async client (what the HTTP server runs).

        Raises:
            CompozyNbError: any failure; nothing is written.
        """
        model, context, wid = self._execution(task, input, workflow_id)
        if isinstance(model, BasicTask):
            return {"status": "completed", "output": await runner.arun_basic_task(self, model, context, wid)}
        return {"status": "completed", "output": await runner.arun_memory_task(self, model, context)}

    def _execution(
        self, task: Mapping[str, Any] | MemoryTask, input: Mapping[str, Any] | None, workflow_id: str | None
    ) -> tuple[MemoryTask | BasicTask, dict[str, Any], str]:
        """The validated task of an execute request, its template context and workflow id."""
        body = dict(task) if isinstance(task, Mapping) else task.model_dump(exclude_none=True)
        data = dict(input if input is not None else body.pop("input", None) or {})
        body.pop("input", None)
        wid = workflow_id or "adhoc"
        context = runner.base_context(wid, data, uuid.uuid4().hex)
        if body.get("type") == "basic":
            return _validate(BasicTask, {"id": "task", **body}), context, wid
        return (task if isinstance(task, MemoryTask) else _validate(MemoryTask, body)), context, wid

    def merge_task(self, workflow_id: str, task_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Complete a partial :meth:`execute` request from task ``task_id`` of workflow ``workflow_id``.

        The request's ``fields`` go over the defined task's (top-level keys: a config block such as
        ``read_config`` replaces the task's whole block). A request whose ``type`` differs from the defined
        task's, or for a task or workflow that is not defined, is returned as it is when it is complete
        (``operation`` and ``memory_ref`` for a memory task, ``messages`` for a ``basic`` one): an ad-hoc task.

        Raises:
            ConfigError: the request is incomplete and no task of the same type fills it in: code
                WORKFLOW_NOT_FOUND or TASK_NOT_FOUND when the workflow or the task is not defined,
                INVALID_CONFIG (field ``type``) when the defined task has another type.
        """
        fields = dict(fields)
        workflow = self.workflows.get(workflow_id)
        task: MemoryTask | BasicTask | None = workflow.task(task_id) if workflow is not None else None
        if task is not None and fields.get("type", task.type) == task.type:
            return {**task.model_dump(exclude_unset=True), **fields}
        if _is_complete(fields):
            return fields
        missing = (
            ["messages"]
            if fields.get("type") == "basic"
            else [f for f in ("operation", "memory_ref") if f not in fields]
        )
        if task is not None:
            raise ConfigError(
                f"task '{task_id}' of workflow '{workflow_id}' is a {task.type} task; a "
                f"'{fields.get('type')}' request must be complete (missing: {', '.join(missing)})",
                field="type",
            )
        if workflow is None:
            known = ", ".join(sorted(self.workflows)) or "none registered"
            raise ConfigError(
                f"workflow not found: '{workflow_id}' (known: {known}); a request for an undefined "
                f"task must be complete (missing: {', '.join(missing)})",
                code=ErrorCode.WORKFLOW_NOT_FOUND,
                workflow=workflow_id,
            )
        known = ", ".join(t.id for t in workflow.tasks)
        raise ConfigError(
            f"task not found: '{task_id}' in workflow '{workflow_id}' (tasks: {known}); a request "
            f"for an undefined task must be complete (missing: {', '.join(missing)})",
            code=ErrorCode.TASK_NOT_FOUND,
            workflow=workflow_id,
            task=task_id,
        )

    def run_task(self, task: MemoryTask, context: Mapping[str, Any]) -> Output:
        """Render a memory task with ``context`` and run its operation."""
        return runner.run_memory_task(self, task, context)

    def instances(
        self, pattern: str = "*", memory_ref: str | None = None, limit: int | None = None
    ) -> list[StatsOutput]:
        """Stats of every stored instance whose key matches ``pattern`` (SCAN, never KEYS; every primary
        of a cluster). Limits come from ``memory_ref`` when given."""
        from compozy_nb.memory.scan import scan_keys

        runtime = self.runtime(memory_ref) if memory_ref else MemoryRuntime(_ANY_RESOURCE)
        rows: list[StatsOutput] = []
        for key in sorted(scan_keys(self.backend, self.name, pattern)):
            rows.append(MemoryInstance(runtime, key, self.backend, self.name).stats())
            if limit is not None and len(rows) >= limit:
                break
        return rows

    async def ainstances(
        self, pattern: str = "*", memory_ref: str | None = None, limit: int | None = None
    ) -> list[StatsOutput]:
        """:meth:`instances` on the event loop: SCAN over ``redis.asyncio``, then the stats of the first ``limit``
        keys (in key order) fetched concurrently (one pipeline per loop turn)."""
        from compozy_nb.memory.scan import ascan_keys

        runtime = self.runtime(memory_ref) if memory_ref else MemoryRuntime(_ANY_RESOURCE)
        keys = sorted(await ascan_keys(self.backend, self.name, pattern))[:limit]
        stats = [AsyncMemory(MemoryInstance(runtime, key, self.backend, self.name)).stats() for key in keys]
        return list(await asyncio.gather(*stats))

    # ------------------------------------------------------------------ workflows
    def workflow(self, workflow_id: str) -> WorkflowHandle:
        """A runnable handle on a registered workflow.

        Raises:
            ConfigError: no such workflow (code WORKFLOW_NOT_FOUND).
        """
        if workflow_id not in self.workflows:
            known = ", ".join(sorted(self.workflows)) or "none registered"
            raise ConfigError(
                f"workflow not found: '{workflow_id}' (known: {known})",
                code=ErrorCode.WORKFLOW_NOT_FOUND,
                workflow=workflow_id,
            )
        return WorkflowHandle(self, self.workflows[workflow_id])

    def run(self, workflow_id: str, input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a workflow and return the run JSON (see :func:`compozy_nb.workflow.runner.run_workflow`)."""
        return runner.run_workflow(self, self.workflow(workflow_id).definition, dict(input or {}))

    async def arun(self, workflow_id: str, input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`run` on the event loop: the same run JSON; memory operations over ``AsyncMemory``, LLM calls
        over async clients (see :func:`compozy_nb.workflow.runner.arun_workflow`)."""
        return await runner.arun_workflow(self, self.workflow(workflow_id).definition, dict(input or {}))


class WorkflowHandle:
    """A registered workflow bound to its project: ``project.workflow("chatbot").run(user_id="u1")``."""

    def __init__(self, project: Project, workflow: Workflow) -> None:
        self.project = project
        self.definition = workflow

    @property
    def id(self) -> str:
        """The workflow id."""
        return self.definition.id

    def run(self, input: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict[str, Any]:
        """Run with ``input`` (a dict) and/or keyword arguments; returns the run JSON."""
        return runner.run_workflow(self.project, self.definition, {**dict(input or {}), **kwargs})

    async def arun(self, input: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict[str, Any]:
        """:meth:`run` on the event loop (memory over ``AsyncMemory``, LLM calls over async clients)."""
        return await runner.arun_workflow(self.project, self.definition, {**dict(input or {}), **kwargs})

    def run_many(self, rows: Any, *, progress: bool | None = None, max_workers: int = 1) -> Any:
        """Run once per row (a list of dicts or a DataFrame); returns a DataFrame, one row per input row in the
        input order, with the input columns plus ``status``, ``error_code``, ``error`` (the message, naming the
        failed task), ``tokens_sent`` (prompt tokens of the LLM calls), ``latency_ms`` and the flattened
        ``output`` of each run (``output.<name>`` for a map).

        Row values are coerced before the run: missing values (``NaN``, ``None``, ``NaT``) are left out of the
        input, numpy scalars become Python numbers, timestamps ISO 8601 text. An input column named like a
        result column (``status``, ``error`` …) is kept as it is and the results of that table are prefixed
        with ``run.`` (``run.status`` …) instead.

        Args:
            rows: A list of dicts or a DataFrame.
            progress: Show a progress bar (``tqdm.auto``: a widget when ipywidgets is installed). By default
                when ``%config Compozy.progress`` allows it and the code runs in a notebook.
            max_workers: Runs in parallel on that many threads (each run is independent; rows that share a
                memory key then interleave their turns).
        """
        if max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {max_workers}", field="max_workers")
        records, inputs, bar = self._batch(rows, progress)
        results: list[dict[str, Any]] = [{} for _ in records]

        def one(index: int) -> None:
            results[index] = self._run_row(inputs[index])
            if bar is not None:
                bar.update(1)

        try:
            if max_workers == 1:
                for index in range(len(records)):
                    one(index)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="run_many") as pool:
                    list(pool.map(one, range(len(records))))
        finally:
            if bar is not None:
                bar.close()
        return _results_frame(records, results)

    async def arun_many(self, rows: Any, *, progress: bool | None = None, concurrency: int = 16) -> Any:
        """:meth:`run_many` on the event loop: up to ``concurrency`` runs at a time, interleaved on one thread
        while they wait on Redis or an LLM; the same DataFrame, rows in the input order."""

        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency!r}", field="concurrency")
        records, inputs, bar = self._batch(rows, progress)
        results: list[dict[str, Any]] = [{} for _ in records]
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    results[index] = _row(await self.arun(inputs[index]), started)
                except CompozyNbError as exc:
                    results[index] = _failed_row(exc, started)
            if bar is not None:
                bar.update(1)

        try:
            await asyncio.gather(*(one(index) for index in range(len(records))))
        finally:
            if bar is not None:
                bar.close()
        return _results_frame(records, results)

    def _batch(self, rows: Any, progress: bool | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
        """The rows as records, the inputs coerced from them, and a progress bar (or None)."""
        from compozy_nb.notebook.views import DISPLAY

        records = rows.to_dict(orient="records") if hasattr(rows, "to_dict") else [dict(r) for r in rows]
        inputs = [_coerce_row(record) for record in records]
        show = (DISPLAY["progress"] is not False and _interactive()) if progress is None else progress
        return records, inputs, _progress(len(records), self.id) if show else None

    def _run_row(self, record: dict[str, Any]) -> dict[str, Any]:
        """One run: status, error code and message, tokens sent, latency and the flattened output."""
        started = time.perf_counter()
        try:
            return _row(self.run(record), started)
        except CompozyNbError as exc:
            return _failed_row(exc, started)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r}, tasks={[t.id for t in self.definition.tasks]})"


RESULT_COLUMNS = ("status", "error_code", "error", "tokens_sent", "latency_ms", "output")


def _row(run: Mapping[str, Any], started: float) -> dict[str, Any]:
    """A run's row: status, error code and message, tokens sent, latency and the flattened output."""
    error = run.get("error") or {}
    row: dict[str, Any] = {
        "status": run["status"],
        "error_code": error.get("code"),
        "error": RunResult.failure(run) if error else None,  # type: ignore[arg-type]
        "tokens_sent": _tokens_sent(run),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    output = run.get("output")
    if isinstance(output, dict):
        row.update({f"output.{k}": v for k, v in output.items() if not isinstance(v, dict | list)})
    elif output is not None:
        row["output"] = output
    return row


def _failed_row(exc: CompozyNbError, started: float) -> dict[str, Any]:
    """The row of a run that could not start (its input was refused)."""
    return {
        "status": "failed",
        "error_code": exc.code.value,
        "error": str(exc),
        "tokens_sent": 0,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _results_frame(records: list[dict[str, Any]], results: list[dict[str, Any]]) -> Any:
    """The input rows with their results; results named like an input column (``status`` …) get ``run.``."""
    import pandas as pd

    clash = {name for record in records for name in record} & set(RESULT_COLUMNS)
    prefix = "run." if clash else ""
    out = [
        {**record, **{prefix + k: v for k, v in result.items()}}
        for record, result in zip(records, results, strict=True)
    ]
    return pd.DataFrame(out)


def _coerce_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A DataFrame row as workflow input: missing values dropped, numpy scalars as Python values, timestamps
    as ISO 8601 text."""
    import pandas as pd

    out: dict[str, Any] = {}
    for name, value in record.items():
        if not isinstance(value, list | dict | tuple):
            try:
                if pd.isna(value):
                    continue
            except (TypeError, ValueError):
                pass
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif hasattr(value, "item") and callable(value.item) and not isinstance(value, list | dict):
            value = value.item()
        out[str(name)] = value
    return out


def _tokens_sent(run: Mapping[str, Any]) -> int:
    """Prompt tokens of every LLM call of a run (``usage.prompt_tokens`` of the basic tasks' outputs)."""
    total = 0
    for task in (run.get("tasks") or {}).values():
        output = task.get("output")
        usage = output.get("usage") if isinstance(output, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            total += usage["prompt_tokens"]
    return total


def _progress(total: int, description: str) -> Any:
    """A ``tqdm.auto`` bar (a widget in notebooks when ipywidgets is installed, text otherwise)."""
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(total=total, desc=description, unit="run")


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _is_complete(fields: Mapping[str, Any]) -> bool:
    """Whether a task request can run without a task definition to fill it in."""
    if fields.get("type") == "basic":
        return "messages" in fields
    return "operation" in fields and "memory_ref" in fields


def _validate(model: type[M], body: Mapping[str, Any]) -> M:
    from pydantic import ValidationError

    from compozy_nb.config._yaml import iter_errors

    try:
        return model.model_validate(body)
    except ValidationError as exc:
        doc = Document(dict(body), "<request>")
        errors = list(iter_errors(exc, model, doc, keep_codes=True))
        first = errors[0]
        message = first.message if len(errors) == 1 else "; ".join(e.message for e in errors)
        raise type(first)(message, field=first.context.get("field")) from None
