"""compozy-nb: conversation memory for AI agents in Redis, wire-compatible with Compozy, made for Jupyter.

Names are imported lazily (PEP 562), so ``%load_ext compozy_nb`` stays fast: redis-py, pydantic models and
tiktoken load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "OPERATIONS": "compozy_nb.memory.instance",
    "AsyncMemory": "compozy_nb.memory.aio",
    "Backend": "compozy_nb.backends",
    "BackendError": "compozy_nb.errors",
    "CompozyNbError": "compozy_nb.errors",
    "ConfigError": "compozy_nb.errors",
    "ConfirmRequiredError": "compozy_nb.errors",
    "CorruptDataError": "compozy_nb.errors",
    "ErrorCode": "compozy_nb.errors",
    "InvalidKeyError": "compozy_nb.errors",
    "InvalidPayloadError": "compozy_nb.errors",
    "LimitExceededError": "compozy_nb.errors",
    "MemoryInstance": "compozy_nb.memory.instance",
    "MemoryNotFoundError": "compozy_nb.errors",
    "MemoryOperationError": "compozy_nb.errors",
    "MemoryResource": "compozy_nb.sdk",
    "MemoryResourceConfig": "compozy_nb.config.memory:MemoryResource",
    "MemoryTask": "compozy_nb.config.task",
    "OperationResult": "compozy_nb.results",
    "PrivacyError": "compozy_nb.errors",
    "ProviderError": "compozy_nb.errors",
    "Project": "compozy_nb.project",
    "RunResult": "compozy_nb.results",
    "Simulation": "compozy_nb.simulation",
    "TemplateError": "compozy_nb.errors",
    "Workflow": "compozy_nb.sdk",
    "WorkflowConfig": "compozy_nb.config.workflow:Workflow",
    "connect": "compozy_nb.backends",
    "inspect": "compozy_nb.notebook.inspector",
    "simulate": "compozy_nb.simulation",
    "synthetic_conversations": "compozy_nb.simulation",
}

__all__ = [
    "OPERATIONS",
    "AsyncMemory",
    "Backend",
    "BackendError",
    "CompozyNbError",
    "ConfigError",
    "ConfirmRequiredError",
    "CorruptDataError",
    "ErrorCode",
    "InvalidKeyError",
    "InvalidPayloadError",
    "LimitExceededError",
    "MemoryInstance",
    "MemoryNotFoundError",
    "MemoryOperationError",
    "MemoryResource",
    "MemoryResourceConfig",
    "MemoryTask",
    "OperationResult",
    "PrivacyError",
    "Project",
    "ProviderError",
    "RunResult",
    "Simulation",
    "TemplateError",
    "Workflow",
    "WorkflowConfig",
    "__version__",
    "connect",
    "inspect",
    "load_ipython_extension",
    "simulate",
    "synthetic_conversations",
    "unload_ipython_extension",
]

if TYPE_CHECKING:
    from compozy_nb.backends import Backend, connect
    from compozy_nb.config.memory import MemoryResource as MemoryResourceConfig
    from compozy_nb.config.task import MemoryTask
    from compozy_nb.config.workflow import Workflow as WorkflowConfig
    from compozy_nb.errors import (
        BackendError,
        CompozyNbError,
        ConfigError,
        ConfirmRequiredError,
        CorruptDataError,
        ErrorCode,
        InvalidKeyError,
        InvalidPayloadError,
        LimitExceededError,
        MemoryNotFoundError,
        MemoryOperationError,
        PrivacyError,
        ProviderError,
        TemplateError,
    )
    from compozy_nb.memory.aio import AsyncMemory
    from compozy_nb.memory.instance import OPERATIONS, MemoryInstance
    from compozy_nb.notebook.inspector import inspect
    from compozy_nb.project import Project
    from compozy_nb.results import OperationResult, RunResult
    from compozy_nb.sdk import MemoryResource, Workflow
    from compozy_nb.simulation import Simulation, simulate, synthetic_conversations


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'compozy_nb' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(import_module(module_name), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext compozy_nb`` registers the ``%compozy`` magic."""
    from compozy_nb.notebook.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext compozy_nb``."""
    from compozy_nb.notebook.magics import unload_ipython_extension as _unload

    _unload(ipython)
