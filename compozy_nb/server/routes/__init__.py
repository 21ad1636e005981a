"""The endpoints, one router per area, each over a :class:`~compozy_nb.project.Project` (the façade): a route
validates the request's shape (the models of :mod:`compozy_nb.server.models`), calls the project or one of its
memory instances and wraps the output map in Compozy's envelope. No memory rule is implemented here.

* :func:`~compozy_nb.server.routes.health.health_router` - ``GET /healthz``.
* :func:`~compozy_nb.server.routes.workflows.workflow_router` - ``/workflows/...`` (execute a task, run a workflow).
* :func:`~compozy_nb.server.routes.memory.memory_router` - ``/api/v0/memory/{memory_ref}/...``.
"""

from __future__ import annotations

from compozy_nb.server.routes.health import health_router
from compozy_nb.server.routes.memory import API_PREFIX, memory_router
from compozy_nb.server.routes.workflows import workflow_router

__all__ = ["API_PREFIX", "health_router", "memory_router", "workflow_router"]
