"""compozy-nb: conversation memory for AI agents in Redis, wire-compatible with Compozy, made for Jupyter."""

from compozy_nb.backends import Backend, connect
from compozy_nb.config.memory import MemoryResource
from compozy_nb.config.task import MemoryTask
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

__version__ = "0.1.0"

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
    "MemoryTask",
    "PrivacyError",
    "Project",
    "TemplateError",
    "__version__",
    "connect",
]
