"""The memory endpoints, Compozy's REST shapes: ``/api/v0/memory/{memory_ref}/{operation}``.

Every endpoint is ``async def``: the 8 operations and ``log`` await :class:`~compozy_nb.memory.aio.AsyncMemory`
(redis.asyncio) on the event loop, ``instances`` awaits ``Project.ainstances`` (SCAN, then the stats concurrently);
CPU-heavy steps run in worker threads.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from compozy_nb.errors import CompozyNbError, ErrorCode
from compozy_nb.memory import operations
from compozy_nb.memory.aio import AsyncMemory
from compozy_nb.memory.instance import MemoryInstance, Output
from compozy_nb.memory.keys import validate_key
from compozy_nb.memory.outputs import AppendOutput, WriteOutput
from compozy_nb.project import Project
from compozy_nb.server.errors import call_renamed, renamed
from compozy_nb.server.models import (
    MEMORY_ERRORS,
    READ_LIMIT_DEFAULT,
    ClearRequest,
    Envelope,
    FlushRequest,
    HealthQuery,
    KeyQuery,
    KeyRequest,
    MessagesRequest,
    ReadQuery,
    StatsQuery,
    error_responses,
)
from compozy_nb.server.responses import ok, unavailable

__all__ = ["API_PREFIX", "memory_router"]

API_PREFIX = "/api/v0"


def _instance(project: Project, memory_ref: str, key: str) -> MemoryInstance:
    """One instance; unknown ``memory_ref`` (404) and invalid ``key`` (400) are reported before an unreachable
    Redis (503)."""
    project.resource(memory_ref)
    call_renamed(lambda: validate_key(key), default_field="key")
    return project.memory(memory_ref, key=key)


async def _store(mem: MemoryInstance, body: MessagesRequest, *, replace: bool) -> WriteOutput | AppendOutput:
    """Write (``replace``) or append the request's messages; errors name ``messages``, the request's field, where
    the engine says ``payload``."""
    memory = AsyncMemory(mem)
    try:
        return await (memory.write if replace else memory.append)(body.payload())
    except CompozyNbError as exc:
        raise renamed(exc, "payload", "messages", "messages") from None


async def _run(project: Project, memory_ref: str, key: str, operation: str, options: BaseModel) -> Output:
    """Run ``operation`` with the request's options (their names are the registry's, so are the engine's error
    fields)."""
    mem = _instance(project, memory_ref, key)
    result: Output = await operations.call(AsyncMemory(mem), operation, options=options.model_dump(exclude={"key"}))
    return result


def memory_router(project: Project) -> APIRouter:
    """The memory endpoints of ``project``."""
    router = APIRouter()
    base = f"{API_PREFIX}/memory/{{memory_ref}}"
    tags: list[str | Enum] = ["memory"]

    @router.get(f"{base}/read", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def read(memory_ref: str, key: KeyQuery, query: Annotated[ReadQuery, Query()]) -> JSONResponse:
        """Messages, oldest first: ``{key, messages, total_count, has_more, count}``, with ``limit`` and ``offset``
        for a page (Compozy's read); ``last`` (the newest N) or ``max_tokens`` (the newest within a token budget)
        instead of a page; ``archive`` reads the flushed/evicted messages.

        Runs on the event loop over redis.asyncio (the async path); with filters (``role``, ``since``,
        ``until``), decoding and filtering the whole list happens in a worker thread."""
        page = query.last is None and query.max_tokens is None
        if page and (query.limit is None or query.limit <= 0):
            query = query.model_copy(update={"limit": READ_LIMIT_DEFAULT})
        out = await _run(project, memory_ref, key, "read", query)
        return ok("memory read successfully", {**out, "limit": query.limit, "offset": query.offset} if page else out)

    @router.post(f"{base}/write", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def write(memory_ref: str, body: MessagesRequest) -> JSONResponse:
        """Replace the content with ``messages``: ``{success, count, key, ...}`` (async path)."""
        out = await _store(_instance(project, memory_ref, body.key), body, replace=True)
        return ok("memory written successfully", out)

    @router.post(f"{base}/append", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def append(memory_ref: str, body: MessagesRequest) -> JSONResponse:
        """Append ``messages`` atomically: ``{success, appended, total_count, key, ...}``.

        Runs on the event loop over redis.asyncio (the async path)."""
        out = await _store(_instance(project, memory_ref, body.key), body, replace=False)
        return ok("memory appended successfully", out)

    @router.post(f"{base}/delete", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def delete(memory_ref: str, body: KeyRequest) -> JSONResponse:
        """Remove the instance (messages, metadata, archive, backups): ``{success, key, ...}`` (async path)."""
        mem = _instance(project, memory_ref, body.key)
        return ok("memory deleted successfully", await AsyncMemory(mem).delete())

    @router.post(f"{base}/flush", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def flush(memory_ref: str, body: FlushRequest) -> JSONResponse:
        """Flush when over the threshold (or ``force``): ``{success, key, summary_generated, message_count,
        token_count, dry_run, would_flush, actual_strategy, ...}`` (async path; planning and a
        ``hybrid_summary`` summarizer run in a worker thread)."""
        return ok("memory flushed successfully", await _run(project, memory_ref, body.key, "flush", body))

    @router.post(f"{base}/clear", tags=tags, response_model=Envelope, responses=error_responses(400, 404, 409))
    async def clear(memory_ref: str, body: ClearRequest) -> JSONResponse:
        """Remove every message; needs ``confirm: true`` (409 otherwise): ``{success, key,
        messages_cleared, backup_created, backup_key}`` (async path)."""
        return ok("memory cleared successfully", await _run(project, memory_ref, body.key, "clear", body))

    @router.get(f"{base}/health", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def health(memory_ref: str, key: KeyQuery, query: Annotated[HealthQuery, Query()]) -> JSONResponse:
        """``{healthy, key, token_count, message_count, actual_strategy, last_flush, redis, warnings}``;
        503 (with the same data) when Redis is unreachable (async path)."""
        out = await _run(project, memory_ref, key, "health", query)
        if not out.get("healthy"):
            message = f"memory unhealthy: {out.get('error', 'Redis is unreachable')}"
            return unavailable(ErrorCode.BACKEND_UNAVAILABLE, message, out)
        return ok("memory health retrieved successfully", out)

    @router.get(f"{base}/stats", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def stats(memory_ref: str, key: KeyQuery, query: Annotated[StatsQuery, Query()]) -> JSONResponse:
        """Counters from the metadata hash, plus Compozy's names ``context_window_used`` (= message_count) and
        ``token_limit`` (= max_tokens, the resource's real limit) (async path)."""
        out = await _run(project, memory_ref, key, "stats", query)
        data = {**out, "context_window_used": out["message_count"], "token_limit": out["max_tokens"]}
        return ok("memory stats retrieved successfully", data)

    @router.get(f"{base}/log", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def log(
        memory_ref: str,
        key: KeyQuery,
        since: Annotated[str | None, Query(max_length=40, description="ms since the epoch or an event id")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> JSONResponse:
        """The operation log, oldest first: ``{key, count, events: [{id, ts, operation, source, ...}]}``."""
        mem = _instance(project, memory_ref, key)
        events = await AsyncMemory(mem).log(since=since, limit=limit)
        data = {"key": key, "count": len(events), "events": [{**e, "ts": e["ts"].isoformat()} for e in events]}
        return ok("memory log retrieved successfully", data)

    @router.get(f"{base}/instances", tags=tags, response_model=Envelope, responses=MEMORY_ERRORS)
    async def instances(
        memory_ref: str,
        pattern: Annotated[str, Query(min_length=1, max_length=512, description="glob over memory keys")] = "*",
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> JSONResponse:
        """Stored instances whose key matches ``pattern`` (SCAN, never KEYS), with their stats (limits of
        ``memory_ref``). Keys do not name their resource: every matching key of the project is listed."""
        project.resource(memory_ref)
        rows = await project.ainstances(pattern, memory_ref=memory_ref, limit=limit + 1)
        data = {
            "pattern": pattern,
            "count": min(len(rows), limit),
            "has_more": len(rows) > limit,
            "instances": rows[:limit],
        }
        return ok("memory instances listed successfully", data)

    return router
