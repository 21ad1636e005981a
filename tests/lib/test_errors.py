"""The error tree: every code is an ``ErrorCode``, every code has an HTTP status, and no code is a bare string."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import compozy_nb
from compozy_nb.errors import CompozyNbError, ErrorCode, InvalidKeyError, ProviderError
from compozy_nb.server.errors import STATUS_BY_CODE, from_exception, http_status

PACKAGE = Path(compozy_nb.__file__).parent


def _all_subclasses(cls: type[CompozyNbError]) -> set[type[CompozyNbError]]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_every_code_has_an_http_status() -> None:
    assert set(STATUS_BY_CODE) == set(ErrorCode)
    for code in ErrorCode:
        assert 400 <= http_status(code) < 600
        assert http_status(str(code)) == http_status(code)


def test_an_unknown_code_fails_loudly() -> None:
    with pytest.raises(ValueError):
        http_status("SOMETHING_ELSE")
    with pytest.raises(ValueError):
        CompozyNbError("boom", code="SOMETHING_ELSE")  # type: ignore[arg-type]


def test_every_error_class_of_the_package_has_a_listed_code() -> None:
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="compozy_nb."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
    classes = _all_subclasses(CompozyNbError)
    assert ProviderError in classes and len(classes) >= 12
    for cls in classes:
        assert isinstance(cls.code, ErrorCode), cls
        assert cls.code in STATUS_BY_CODE, cls


def _bare_code_literals(path: Path) -> list[str]:
    """``code="X"`` arguments, ``code = "X"`` assignments and ``{"code": "X"}`` entries with an upper-case
    string literal: each must be an ``ErrorCode`` member instead."""
    found: list[str] = []
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def is_code_literal(node: ast.AST | None) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isupper()

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "code" and is_code_literal(node.value):
            found.append(f"{path.name}:{node.value.lineno}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and is_code_literal(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code" and is_code_literal(value):
                    found.append(f"{path.name}:{value.lineno}")
    return found


def test_no_error_code_is_a_bare_string_in_the_package() -> None:
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _bare_code_literals(path)]
    # errors.py defines the members themselves (NAME = "NAME"), which the walk does not flag.
    assert offenders == []


def test_codes_read_as_plain_strings() -> None:
    error = InvalidKeyError("bad key", key="k")
    assert error.code == "INVALID_KEY" and error.code is ErrorCode.INVALID_KEY
    assert repr(error.to_dict()) == repr({"code": "INVALID_KEY", "message": "bad key", "key": "k"})
    assert type(error.to_dict()["code"]) is str  # output maps hold plain strings (docs compare types)
    assert json.loads(json.dumps(error.to_dict()))["code"] == "INVALID_KEY"
    status, body = from_exception(error)
    assert status == 400 and type(body["error"]["code"]) is str and body["error"]["code"] == "INVALID_KEY"
    assert f"{error.code}" == "INVALID_KEY"


def test_provider_error_lives_in_errors_and_is_exported() -> None:
    from compozy_nb.workflow import providers

    # the providers module imports ProviderError but does not re-export it explicitly (no "as", no __all__)
    assert providers.ProviderError is ProviderError is compozy_nb.ProviderError
    assert compozy_nb.ErrorCode is ErrorCode
    assert ProviderError("no reply").code == "PROVIDER_ERROR"
    assert ProviderError("slow", code=ErrorCode.PROVIDER_TIMEOUT).code == "PROVIDER_TIMEOUT"
