"""``GET /healthz``: the process answers and Redis answers a PING (open without a token)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from compozy_nb.errors import BackendError
from compozy_nb.memory.store import redis_errors
from compozy_nb.project import Project
from compozy_nb.server.models import Envelope, ErrorEnvelope
from compozy_nb.server.responses import ok, unavailable

__all__ = ["health_router"]


def health_router(project: Project) -> APIRouter:
    """The health endpoint of ``project``."""
    router = APIRouter()

    @router.get("/healthz", tags=["health"], response_model=Envelope, responses={503: {"model": ErrorEnvelope}})
    def healthz() -> JSONResponse:
        """The process answers and Redis answers a PING (never needs a token)."""
        data: dict[str, Any] = {"process": "ok", "project": project.name, "redis": {"ok": False}}
        try:
            backend = project.backend
            with redis_errors("healthz", None):
                started = time.perf_counter()
                backend.client.ping()
            data["redis"] = {
                "ok": True,
                "backend": backend.kind,
                "url": backend.display_url,
                "ping_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        except BackendError as exc:
            data["redis"]["error"] = exc.message
            return unavailable(exc.code, str(exc), data)
        return ok("healthy", data)

    return router
