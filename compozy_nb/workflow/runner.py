"""Running workflows: template context, static checks, task execution, the run JSON."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import os
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar, cast

from compozy_nb._secrets import excerpt
from compozy_nb.backends import Backend
from compozy_nb.config._yaml import Document
from compozy_nb.config.memory import MemoryResource
from compozy_nb.config.project import ProjectSettings
from compozy_nb.config.task import MemoryTask
from compozy_nb.config.workflow import BasicTask, Workflow, WorkflowMemoryTask
from compozy_nb.errors import CompozyNbError, ConfigError, ErrorCode, MemoryNotFoundError, TemplateError
from compozy_nb.memory.aio import arun_operation
from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime, run_operation
from compozy_nb.memory.log import attributed, log_source
from compozy_nb.memory.transcript import text_projection
from compozy_nb.results import RunResult
from compozy_nb.templating import format_value, referenced_paths, render, render_key, render_value
from compozy_nb.workflow.providers import ChatRequest, ChatResponse, Registry, acomplete, complete

BUILTINS = ("workflow", "tasks", "input", "now")
T = TypeVar("T")


class Host(Protocol):
    """What a workflow run needs from its surroundings: resources and their compiled runtimes, the backend,
    the LLM/tool registry, provider defaults and run settings. a ``Project`` is one; the
    runner never imports it (the façade calls down into the runner, never the reverse)."""

    name: str
    llms: Registry
    settings: ProjectSettings

    @property
    def backend(self) -> Backend:
        """The connected backend."""

    def resource(self, memory_ref: str) -> MemoryResource:
        """The resource ``memory_ref`` (MemoryNotFoundError otherwise)."""

    def runtime(self, memory_ref: str) -> MemoryRuntime:
        """The compiled runtime of resource ``memory_ref``."""

    def provider_defaults(self, provider: str) -> dict[str, Any]:
        """Defaults for ``provider`` from the project settings."""


# ---------------------------------------------------------------------------- text rendering
def transcript(value: Any) -> str:
    """Format a value for a text field: a read output or a message list becomes ``role: content`` lines."""
    messages = value.get("messages") if isinstance(value, Mapping) and "messages" in value else value
    if isinstance(messages, list) and all(isinstance(m, Mapping) and "content" in m for m in messages):
        return "\n".join(f"{m.get('role', 'user')}: {text_projection(m.get('content'))}" for m in messages)
    return format_value(value)


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """Render a text field (a message's ``content``) with transcript formatting."""
    return render(template, context, formatter=transcript)


def render_messages(
    messages: Sequence[Mapping[str, Any]], context: Mapping[str, Any], where: str, *, drop_empty: bool = True
) -> list[dict[str, Any]]:
    """Render message templates: ``content`` as text, other string fields keeping types. In prompts
    (``drop_empty``) a message whose content renders empty (no history yet) is dropped; payloads keep it,
    so that validation rejects it rather than a write silently storing nothing."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        rendered = _render_message(message, context, f"{where}[{index}]")
        if drop_empty and isinstance(rendered.get("content"), str) and not rendered["content"].strip():
            continue
        out.append(rendered)
    return out


def _render_message(message: Mapping[str, Any], context: Mapping[str, Any], where: str) -> dict[str, Any]:
    rendered: dict[str, Any] = {}
    for name, value in message.items():
        field_where = f"{where}.{name}"
        if name == "content" and isinstance(value, str):
            try:
                rendered[name] = render_text(value, context)
            except TemplateError as exc:
                raise TemplateError(f"{field_where}: {exc.message}", field=field_where) from None
        else:
            rendered[name] = render_value(value, context, where=field_where)
    return rendered


def render_payload(payload: Any, context: Mapping[str, Any]) -> Any:
    """Render a memory task payload (messages' content as text, everything else keeping types)."""
    if isinstance(payload, Mapping) and "content" in payload:
        return _render_message(payload, context, "payload")
    if isinstance(payload, list) and all(isinstance(p, Mapping) for p in payload):
        return render_messages(payload, context, "payload", drop_empty=False)
    return render_value(payload, context, where="payload")


# ---------------------------------------------------------------------------- context
def base_context(workflow_id: str, data: Mapping[str, Any], exec_id: str) -> dict[str, Any]:
    """The variables every template of a run sees before any task ran."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    inputs = dict(data)
    return {
        **inputs,
        "workflow": {"id": workflow_id, "exec_id": exec_id, "input": inputs},
        "input": inputs,
        "tasks": {},
        "now": now,
    }


# ---------------------------------------------------------------------------- static checks
def _task_templates(task: WorkflowMemoryTask | BasicTask) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            found.append((where, value))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    if isinstance(task, WorkflowMemoryTask):
        if task.key_template:
            walk(task.key_template, "key_template")
        walk(task.payload, "payload")
    else:
        walk([m.model_dump() for m in task.messages], "messages")
        for index, mem in enumerate(task.memory):
            if mem.key:
                walk(mem.key, f"memory[{index}].key")
    return found


def _field_path(field: str) -> tuple[str | int, ...]:
    """``messages[1].content`` -> ``("messages", 1, "content")``."""
    parts: list[str | int] = []
    for piece in field.replace("]", "").replace("[", ".").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


def check_workflow(workflow: Workflow, project: Host, doc: Document | None = None) -> list[ConfigError]:
    """Problems found before anything runs: unknown memory refs, references to unknown or later task
    outputs, unknown input variables (when the workflow declares an input schema)."""
    problems: list[ConfigError] = []
    source = doc.source if doc else f"<workflow {workflow.id}>"

    def where(index: int, field: str) -> str:
        return doc.where(("tasks", index, *_field_path(field))) if doc else source

    known_inputs = set(workflow.input.properties) if workflow.input and workflow.input.properties else None
    outputs_so_far: set[str] = set()
    ids_so_far: set[str] = set()
    all_outputs = {t.output for t in workflow.tasks if t.output}
    all_ids = {t.id for t in workflow.tasks}
    for index, task in enumerate(workflow.tasks):
        refs = [task.memory_ref] if isinstance(task, WorkflowMemoryTask) else [m.id for m in task.memory]
        for ref in refs:
            try:
                project.resource(ref)
            except MemoryNotFoundError as exc:
                field = "memory_ref" if isinstance(task, WorkflowMemoryTask) else "memory"
                problems.append(
                    ConfigError(
                        f"task '{task.id}': {exc.message}",
                        source=where(index, field),
                        field=f"tasks[{index}].{field}",
                        task=task.id,
                    )
                )
        for field, template in _task_templates(task):
            try:
                paths = referenced_paths(template)
            except TemplateError as exc:
                problems.append(
                    ConfigError(
                        f"task '{task.id}' {field}: {exc.message}",
                        source=where(index, field),
                        field=f"tasks[{index}].{field}",
                        task=task.id,
                    )
                )
                continue
            for path in paths:
                if not path:
                    continue
                head = path[0]
                message = None
                if head == "tasks" and len(path) > 1:
                    target = path[1]
                    if target not in all_ids:
                        message = f"references unknown task '{target}'"
                    elif target not in ids_so_far:
                        message = f"references task '{target}', which has not run yet at this point"
                elif head in all_outputs and head not in outputs_so_far:
                    message = f"references output '{head}' of a task that has not run yet at this point"
                elif (
                    known_inputs is not None
                    and head not in BUILTINS
                    and head not in outputs_so_far
                    and head not in known_inputs
                ):
                    message = f"references '{head}', which is neither an input property nor a task output"
                if message:
                    problems.append(
                        ConfigError(
                            f"task '{task.id}' {field}: {message} ({{{{.{'.'.join(path)}}}}})",
                            source=where(index, field),
                            field=f"tasks[{index}].{field}",
                            task=task.id,
                        )
                    )
        ids_so_far.add(task.id)
        if task.output:
            outputs_so_far.add(task.output)
    return problems


def validate_input(workflow: Workflow, data: Mapping[str, Any]) -> None:
    """Check the run input against the workflow's input schema."""
    schema = workflow.input
    if schema is None:
        return
    types: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "object": dict,
        "array": list,
        "null": type(None),
    }
    for name in schema.required:
        if name not in data:
            raise ConfigError(
                f"workflow '{workflow.id}' input: missing required property '{name}'", field=f"input.{name}"
            )
    for name, value in data.items():
        spec = schema.properties.get(name)
        if spec is None:
            if not schema.additional_properties:
                raise ConfigError(f"workflow '{workflow.id}' input: unknown property '{name}'", field=f"input.{name}")
            continue
        kind = spec.get("type")
        expected = types.get(kind) if isinstance(kind, str) else None
        wrong_bool = kind in ("integer", "number") and isinstance(value, bool)
        if expected is not None and (not isinstance(value, expected) or wrong_bool):
            raise ConfigError(
                f"workflow '{workflow.id}' input: property '{name}' must be {kind}, got {type(value).__name__}",
                field=f"input.{name}",
            )
        if "enum" in spec and value not in spec["enum"]:
            raise ConfigError(
                f"workflow '{workflow.id}' input: property '{name}' must be one of {spec['enum']}",
                field=f"input.{name}",
            )


# ---------------------------------------------------------------------------- execution
# A run is written once, as a generator of the steps that wait on something (a memory operation, an LLM call,
# a tool); run_workflow drives it on the calling thread, arun_workflow on the event loop. A step's failure is
# thrown back into the generator, where the run handles it like any error of its task.
@dataclass(frozen=True)
class MemoryStep:
    """Run ``operation`` on ``instance`` (task-style options)."""

    instance: MemoryInstance
    operation: str
    payload: Any = None
    options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class LlmStep:
    """Call ``provider`` with ``request``."""

    provider: str
    request: ChatRequest
    slot: str


@dataclass(frozen=True)
class ToolStep:
    """Run the registered tool a model called: its answer is the tool message."""

    call: Mapping[str, Any]


RunStep = MemoryStep | LlmStep | ToolStep
RunSteps = Generator[RunStep, Any, T]


def _advance(steps: RunSteps[Any], value: Any, error: Exception | None) -> tuple[RunStep | None, Any]:
    """Give the run the last step's value (or throw its error in): the next step, or None and the result."""
    try:
        return (steps.throw(error) if error is not None else steps.send(value)), None
    except StopIteration as done:
        return None, done.value


def _drive(project: Host, steps: RunSteps[T]) -> T:
    """Run the steps on the calling thread."""
    value: Any = None
    error: Exception | None = None
    while True:
        step, result = _advance(steps, value, error)
        if step is None:
            return cast(T, result)
        value, error = None, None
        try:
            if isinstance(step, MemoryStep):
                value = run_operation(step.instance, step.operation, step.payload, step.options)
            elif isinstance(step, LlmStep):
                value = complete(step.provider, step.request, project.llms, step.slot)
            else:
                value = _tool_message(step.call, _call_tool(project, step.call))
        except Exception as exc:
            error = exc


_RUN_POOL = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="compozy-nb run")
"""Where async runs advance between steps: a pool of their own, so plain tools or models blocking the loop's
default executor never hold up another run's templates and prompts (threads start on first use)."""


async def _advance_off_loop(steps: RunSteps[Any], value: Any, error: Exception | None) -> tuple[RunStep | None, Any]:
    """:func:`_advance` in :data:`_RUN_POOL`, in a copy of the caller's context (the log's source and friends)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_RUN_POOL, context.run, _advance, steps, value, error)


async def _adrive(project: Host, steps: RunSteps[T]) -> T:
    """Run the steps from the event loop: memory operations over ``AsyncMemory``, LLM calls over async
    clients, tools awaited (``async def``) or in a worker thread (a plain function may block). The run's own
    work between steps (rendering templates and payloads, building prompts) is CPU-bound, so it advances in a
    worker thread too (:data:`_RUN_POOL`): the loop only waits."""
    value: Any = None
    error: Exception | None = None
    while True:
        step, result = await _advance_off_loop(steps, value, error)
        if step is None:
            return cast(T, result)
        value, error = None, None
        try:
            if isinstance(step, MemoryStep):
                value = await arun_operation(step.instance, step.operation, step.payload, step.options)
            elif isinstance(step, LlmStep):
                value = await acomplete(step.provider, step.request, project.llms, step.slot)
            else:
                value = _tool_message(step.call, await _acall_tool(project, step.call))
        except Exception as exc:
            error = exc


def _memory_task_steps(project: Host, task: MemoryTask, context: Mapping[str, Any]) -> RunSteps[dict[str, Any]]:
    runtime = project.runtime(task.memory_ref)
    template = task.key_template or runtime.resource.key
    if not template:
        raise TemplateError(
            f"key_template is required (memory resource '{runtime.resource.id}' has no key)",
            field="key_template",
        )
    key = render_key(template, context, "key_template")
    instance = MemoryInstance(runtime, key, project.backend, project.name)
    payload = render_payload(task.payload, context) if task.payload is not None else None
    output: dict[str, Any] = yield MemoryStep(instance, task.operation, payload, task.options())
    return output


def run_memory_task(project: Host, task: MemoryTask, context: Mapping[str, Any]) -> dict[str, Any]:
    """Render and run a memory task of a workflow."""
    return _drive(project, _memory_task_steps(project, task, context))


def run_basic_task(project: Host, task: BasicTask, context: Mapping[str, Any], workflow_id: str) -> dict[str, Any]:
    """Render the messages, inject agent memory, call the provider, store the exchange in memory.

    Order of the prompt: the task's system messages, then each attached memory's history (in the order
    the memories are listed, oldest first within each), then the task's other messages.
    """
    return _drive(project, _basic_task_steps(project, task, context, workflow_id))


async def arun_memory_task(project: Host, task: MemoryTask, context: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_memory_task` on the event loop (the operation over ``AsyncMemory``)."""
    return await _adrive(project, _memory_task_steps(project, task, context))


async def arun_basic_task(
    project: Host, task: BasicTask, context: Mapping[str, Any], workflow_id: str
) -> dict[str, Any]:
    """:func:`run_basic_task` on the event loop (memory over ``AsyncMemory``, the LLM over an async client)."""
    return await _adrive(project, _basic_task_steps(project, task, context, workflow_id))


def _basic_task_steps(
    project: Host, task: BasicTask, context: Mapping[str, Any], workflow_id: str
) -> RunSteps[dict[str, Any]]:
    messages = render_messages([m.model_dump() for m in task.messages], context, "messages")
    attached: list[tuple[MemoryInstance, str]] = []
    history: list[dict[str, Any]] = []
    for index, ref in enumerate(task.memory):
        runtime = project.runtime(ref.id)
        template = ref.key or runtime.resource.key
        if not template:
            raise TemplateError(
                f"memory[{index}] ('{ref.id}') needs key (the resource has no default key)",
                field=f"memory[{index}].key",
            )
        instance = MemoryInstance(
            runtime, render_key(template, context, f"memory[{index}].key"), project.backend, project.name
        )
        budget = {"max_tokens": ref.max_context_tokens} if ref.max_context_tokens else None
        read = yield MemoryStep(instance, "read", None, budget)
        history.extend(_prompt_message(m) for m in read["messages"])
        attached.append((instance, ref.mode))
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    own = [{"role": m["role"], "content": m["content"]} for m in [*system, *rest]]
    prompt = [*own[: len(system)], *history, *own[len(system) :]]
    options: dict[str, Any] = {
        "replies": task.replies,
        "reply_template": task.reply_template,
        "base_url": task.base_url,
        "api_key_env": task.api_key_env,
        "function": task.function,
        "input": context.get("input", {}),
        "tools": task.tools,
        "tool_choice": task.tool_choice,
    }
    defaults = project.provider_defaults(task.provider)
    for name in ("base_url", "api_key_env", "max_reply_bytes"):
        if options.get(name) is None and defaults.get(name):
            options[name] = defaults[name]
    request = ChatRequest(
        prompt, task.model or defaults.get("model"), task.temperature, task.max_tokens, task.timeout, options
    )
    slot = f"{workflow_id}/{task.id}"
    reply: ChatResponse = yield LlmStep(task.provider, request, slot)
    reply, turn = yield from _tool_steps(project, task, request, reply, slot)
    if reply.content.strip() or turn:
        last_user = next((m for m in reversed(rest) if m["role"] == "user"), None)
        final = [{"role": "assistant", "content": reply.content}] if reply.content.strip() else []
        exchange = [*([last_user] if last_user else []), *turn, *final]
        for instance, mode in attached:
            if mode == "read-write":
                yield MemoryStep(instance, "append", exchange)
    redact = _run_redactor(project, [instance for instance, _ in attached])
    extra = {"tool_calls": reply.tool_calls} if reply.tool_calls else {}
    if turn:
        extra["turn"] = turn
    return {
        **extra,
        "content": redact(reply.content),
        "role": reply.role,
        "model": reply.model,
        "provider": reply.provider,
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
        "finish_reason": reply.finish_reason,
        "prompt": [{**m, "content": redact(m["content"])} for m in prompt],
    }


def _prompt_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message as sent to a model: every field but our ``tokens``, ``id`` and ``ts``."""
    return {k: v for k, v in message.items() if k not in ("tokens", "id", "ts")}


def _tool_steps(
    project: Host, task: BasicTask, request: ChatRequest, reply: ChatResponse, slot: str
) -> RunSteps[tuple[ChatResponse, list[dict[str, Any]]]]:
    """While the model calls tools registered in ``project.llms.tools`` (at most ``task.max_tool_steps``
    rounds), run them and call the model again with the results. Returns the last reply and the messages of
    the completed rounds (each assistant tool-call message followed by its tool results). A reply calling an
    unregistered tool ends the loop: its calls are in the task output, not stored (an unanswered call would
    make the next prompt invalid)."""
    turn: list[dict[str, Any]] = []
    for _ in range(task.max_tool_steps):
        calls = reply.tool_calls or []
        if not calls or not all(_tool_name(call) in project.llms.tools for call in calls):
            break
        group: list[dict[str, Any]] = [{"role": "assistant", "content": reply.content or None, "tool_calls": calls}]
        for call in calls:
            group.append((yield ToolStep(call)))
        turn.extend(group)
        request.messages.extend(group)
        reply = yield LlmStep(task.provider, request, slot)
    return reply, turn


def _tool_name(call: Any) -> str:
    function = call.get("function") if isinstance(call, Mapping) else None
    return str(function.get("name", "")) if isinstance(function, Mapping) else ""


def _tool_arguments(project: Host, call: Mapping[str, Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
    arguments = json.loads(call["function"].get("arguments") or "{}")
    if not isinstance(arguments, dict):
        raise TypeError("the arguments are not a JSON object")
    return project.llms.tools[_tool_name(call)], arguments


def _call_tool(project: Host, call: Mapping[str, Any]) -> Any:
    """The tool's result, or the exception it raised (the model sees the failure, as with any tool error)."""
    try:
        tool, arguments = _tool_arguments(project, call)
        result = tool(**arguments)
        if inspect.isawaitable(result):  # an async tool in a sync run: its own loop, on a thread of its own
            with ThreadPoolExecutor(1, thread_name_prefix="compozy-nb tool") as pool:
                return pool.submit(asyncio.run, _awaited(result)).result()
        return result
    except Exception as exc:
        return _ToolFailure(exc)


async def _acall_tool(project: Host, call: Mapping[str, Any]) -> Any:
    """:func:`_call_tool` on the event loop: an ``async def`` tool is awaited, a plain one runs in a worker
    thread."""
    try:
        tool, arguments = _tool_arguments(project, call)
        if inspect.iscoroutinefunction(tool):
            return await tool(**arguments)
        result = await asyncio.to_thread(tool, **arguments)
        return await result if inspect.isawaitable(result) else result
    except Exception as exc:
        return _ToolFailure(exc)


async def _awaited(value: Any) -> Any:
    return await value


@dataclass(frozen=True)
class _ToolFailure:
    error: Exception


def _tool_message(call: Mapping[str, Any], result: Any) -> dict[str, Any]:
    """The tool message answering ``call``: the result (JSON unless a string) or the tool's error text."""
    if isinstance(result, _ToolFailure):
        text = f"error: {type(result.error).__name__}: {result.error}"
    else:
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    return {"role": "tool", "tool_call_id": str(call.get("id", "")), "content": text}


def _run_redactor(project: Host, instances: Sequence[MemoryInstance]) -> Callable[[Any], Any]:
    """What the run JSON shows of this turn's prompt and reply: as sent and received (the default; redaction
    applies to what is stored), or, with ``runs.redact`` in compozy.yaml, redacted by the privacy policy of
    every memory the task uses."""
    if not project.settings.runs.redact:
        return lambda text: text
    policies = [instance.runtime.privacy for instance in instances if not instance.runtime.privacy.is_empty()]

    def redact(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        for policy in policies:
            text = policy.redact(text)
        return text

    return redact


@attributed("workflow")
def run_workflow(
    project: Host, workflow: Workflow, data: Mapping[str, Any] | None = None, exec_id: str | None = None
) -> dict[str, Any]:
    """Run every task in order and return the run JSON.

    ``{"status", "workflow_id", "exec_id", "output", "tasks": {id: {"status", "output", "error",
    "duration_ms"}}}``. A failing task stops the run (``status: failed`` with its error code) unless its
    ``on_error`` is ``continue``.

    Raises:
        ConfigError: the input does not match the workflow's input schema (nothing ran).
    """
    return _drive(project, _workflow_steps(project, workflow, data, exec_id))


async def arun_workflow(
    project: Host, workflow: Workflow, data: Mapping[str, Any] | None = None, exec_id: str | None = None
) -> dict[str, Any]:
    """:func:`run_workflow` on the event loop: the same run JSON, with memory operations over
    ``AsyncMemory`` and LLM calls over async clients (no thread but for plain Python LLMs and tools)."""
    with log_source("workflow"):
        return await _adrive(project, _workflow_steps(project, workflow, data, exec_id))


def _workflow_steps(
    project: Host, workflow: Workflow, data: Mapping[str, Any] | None, exec_id: str | None
) -> RunSteps[dict[str, Any]]:
    data = dict(data or {})
    validate_input(workflow, data)
    exec_id = exec_id or uuid.uuid4().hex
    context = base_context(workflow.id, data, exec_id)
    tasks: dict[str, dict[str, Any]] = {}
    status = "completed"
    error: dict[str, Any] | None = None
    last_output: Any = None
    for task in workflow.tasks:
        started = time.perf_counter()
        try:
            if isinstance(task, WorkflowMemoryTask):
                task_output = yield from _memory_task_steps(project, task, context)
            else:
                task_output = yield from _basic_task_steps(project, task, context, workflow.id)
            tasks[task.id] = {
                "status": "completed",
                "output": task_output,
                "error": None,
                "duration_ms": _ms(started),
            }
            context["tasks"][task.id] = {"output": task_output, "status": "completed"}
            if task.output:
                context[task.output] = task_output
            last_output = task_output
        except Exception as exc:
            task_error = {**_error_of(exc), "task": task.id}
            tasks[task.id] = {
                "status": "failed",
                "output": None,
                "error": task_error,
                "duration_ms": _ms(started),
            }
            context["tasks"][task.id] = {"output": None, "status": "failed", "error": task_error}
            if task.on_error == "continue":
                continue
            status, error = "failed", task_error
            break
    output: Any = last_output
    if status == "completed" and workflow.output is not None:
        try:
            output = render_value(workflow.output, context, where="output")
        except TemplateError as exc:
            status, error = "failed", {"code": exc.code.value, "message": str(exc), "task": None}
            output = None
    run: dict[str, Any] = RunResult(
        {
            "status": status,
            "workflow_id": workflow.id,
            "exec_id": exec_id,
            "output": output if status == "completed" else None,
            "tasks": tasks,
        }
    )
    if error is not None:
        run["error"] = error
    return run


def _error_of(exc: Exception) -> dict[str, Any]:
    """A task's error in the run JSON: the code and message of a CompozyNbError; any other exception (a bug,
    a library raising something unexpected) is INTERNAL_ERROR, with its type and a scrubbed excerpt."""
    if isinstance(exc, CompozyNbError):
        return {"code": exc.code.value, "message": str(exc)}
    return {"code": ErrorCode.INTERNAL_ERROR.value, "message": f"{type(exc).__name__}: {excerpt(str(exc))}"}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
