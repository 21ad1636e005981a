"""The public API: a curated __all__, every name importable, one exception tree."""

from __future__ import annotations

import subprocess
import sys

import compozy_nb
from compozy_nb import errors


def test_all_names_resolve() -> None:
    for name in compozy_nb.__all__:
        assert getattr(compozy_nb, name) is not None, name


def test_all_is_curated() -> None:
    expected = {
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
        "ProviderError",
        "ErrorCode",
        "AsyncMemory",
        "Project",
        "RunResult",
        "Simulation",
        "TemplateError",
        "Workflow",
        "WorkflowConfig",
        "__version__",
        "connect",
        "inspect",
        "load_ipython_extension",
        "unload_ipython_extension",
        "simulate",
        "synthetic_conversations",
    }
    assert set(compozy_nb.__all__) == expected


def test_one_exception_tree_with_codes() -> None:
    codes = set()
    for name in errors.__all__:
        cls = getattr(errors, name)
        if cls is errors.ErrorCode:
            continue
        assert issubclass(cls, errors.CompozyNbError)
        codes.add(cls.code)
    assert {
        "INVALID_CONFIG",
        "MEMORY_NOT_FOUND",
        "INVALID_KEY",
        "INVALID_PAYLOAD",
        "TEMPLATE_ERROR",
        "CONFIRM_REQUIRED",
        "LIMIT_EXCEEDED",
        "PRIVACY_ERROR",
        "BACKEND_UNAVAILABLE",
    } <= codes
    assert issubclass(errors.ConfigError, ValueError)


def test_load_ext_is_light() -> None:
    probe = (
        "import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'compozy_nb')\n"
        "print(sorted(m for m in ('pandas', 'matplotlib', 'redis', 'tiktoken', 'fakeredis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
