"""compozy-nb: conversation memory for AI agents in Redis, wire-compatible with Compozy, made for Jupyter."""

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
    InvalidKeyError,
    InvalidPayloadError,
    LimitExceededError,
    MemoryNotFoundError,
    MemoryOperationError,
    PrivacyError,
    TemplateError,
)
from compozy_nb.memory.instance import OPERATIONS, MemoryInstance
from compozy_nb.project import Project
from compozy_nb.results import OperationResult, RunResult
from compozy_nb.sdk import MemoryResource, Workflow

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext compozy_nb`` registers the ``%compozy`` magic."""
    from compozy_nb.notebook.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext compozy_nb``."""
    from compozy_nb.notebook.magics import unload_ipython_extension as _unload

    _unload(ipython)

__all__ = [
    "OPERATIONS",
    "Backend",
    "BackendError",
    "CompozyNbError",
    "ConfigError",
    "ConfirmRequiredError",
    "CorruptDataError",
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
    "RunResult",
    "TemplateError",
    "Workflow",
    "WorkflowConfig",
    "__version__",
    "connect",
    "load_ipython_extension",
    "unload_ipython_extension",
]
