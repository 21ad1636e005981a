"""The workflow endpoints: execute one task (the seed's request) or run a whole workflow.

Both run on the event loop (``Project.aexecute`` and ``Project.arun``): memory operations over redis.asyncio, a
``basic`` task's LLM over an async client; the run's CPU-bound work (templates, prompts, token counts) and plain
Python LLMs and tools go to worker threads, so a slow model holds no thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from compozy_nb.errors import CompozyNbError
from compozy_nb.project import Project
from compozy_nb.server.errors import http_status, renamed
from compozy_nb.server.models import TaskRequest, TaskResponse, WorkflowRunRequest, error_responses
from compozy_nb.server.responses import JSON

__all__ = ["workflow_router"]

_TASK_FIELDS = {
    True: {
        "INVALID_KEY": "key_template",
        "TEMPLATE_ERROR": "key_template",
        "MEMORY_NOT_FOUND": "memory_ref",
        "CONFIRM_REQUIRED": "clear_config.confirm",
        "LIMIT_EXCEEDED": "payload",
        "INVALID_PAYLOAD": "payload",
    },
    False: {"MEMORY_NOT_FOUND": "memory"},
}
_NO_FIELD = "<document>"


def _task_error(exc: CompozyNbError, is_memory: bool) -> CompozyNbError:
    """Name the request field at fault. Errors of the task model's cross-field checks (payload required,
    key_template syntax) come from the engine without a field (``<document>``): it is inferred here."""
    if exc.context.get("field") == _NO_FIELD:
        context = {k: v for k, v in exc.context.items() if k != "field"}
        message = exc.message.removeprefix(f"{_NO_FIELD}: ")
        guess = "payload" if "payload" in message else "key_template" if "template" in message else "body"
        exc = type(exc)(message, code=exc.code, **context, field=guess)
    return renamed(exc, default_field=_TASK_FIELDS[is_memory].get(exc.code))


def workflow_router(project: Project) -> APIRouter:
    """The workflow endpoints of ``project``."""
    router = APIRouter()

    @router.post(
        "/workflows/{workflow_id}/tasks/{task_id}/execute",
        tags=["workflows"],
        response_model=TaskResponse,
        responses=error_responses(400, 404, 409, 413),
    )
    async def execute_task(
        workflow_id: str, task_id: str, body: Annotated[TaskRequest | None, Body()] = None
    ) -> JSONResponse:
        """Execute one task (the seed's request). Missing fields come from task ``task_id`` of workflow
        ``workflow_id``; a complete body runs even when they are not defined (ad-hoc). ``.workflow.id`` is
        ``workflow_id``. Returns ``{"status": "completed", "output": {...}}``."""
        fields = body.model_dump(exclude_unset=True) if body is not None else {}
        if fields.get("type", "") is None:
            del fields["type"]
        data = fields.pop("input", None) or {}
        merged = project.merge_task(workflow_id, task_id, fields)
        is_memory = merged.get("type", "memory") == "memory"
        try:
            if is_memory and isinstance(merged.get("memory_ref"), str):
                project.resource(merged["memory_ref"])
            return JSON(await project.aexecute(merged, data, workflow_id=workflow_id))
        except CompozyNbError as exc:
            raise _task_error(exc, is_memory) from None

    @router.post("/workflows/{workflow_id}/execute", tags=["workflows"], responses=error_responses(400, 404))
    async def execute_workflow(
        workflow_id: str, body: Annotated[WorkflowRunRequest | None, Body()] = None
    ) -> JSONResponse:
        """Run a whole workflow with ``{"input": {...}}`` and return the run JSON. A run that failed keeps
        the run JSON as body with the HTTP status of its error code (400, 404, 409, 413, 503 ...)."""
        data = body.input if body is not None else {}
        run = await project.arun(workflow_id, data)  # raises (400) when the input does not match the workflow's schema
        error = run.get("error") or {}
        status = 200 if run.get("status") == "completed" else http_status(str(error.get("code")))
        return JSON(run, status_code=status)

    return router
