"""YAML loading that remembers where every value came from, and pydantic errors turned into file:line."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from compozy_nb.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass
class Document:
    """One YAML document: its data and the line (1-based) of every path inside it."""

    data: Any
    source: str
    lines: dict[Loc, int] = field(default_factory=dict)
    start_line: int = 1

    def where(self, loc: Loc) -> str:
        """``file:line`` of the deepest known prefix of ``loc``."""
        for cut in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:cut]))
            if line is not None:
                return f"{self.source}:{line}"
        return f"{self.source}:{self.start_line}"


class _SafeLineLoader(yaml.SafeLoader):
    """SafeLoader; kept as a subclass so our constructors never leak into PyYAML's global one."""


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            _walk(value_node, (*loc, key), lines)
            lines[(*loc, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), lines)


def load_documents(text: str, source: str = "<string>") -> list[Document]:
    """Parse every ``---`` document of ``text``, keeping line numbers.

    Raises:
        ConfigError: malformed YAML, with the file:line of the problem.
    """
    docs: list[Document] = []
    try:
        for node in yaml.compose_all(text, Loader=_SafeLineLoader):
            if node is None:
                continue
            lines: dict[Loc, int] = {}
            _walk(node, (), lines)
            constructor = _SafeLineLoader("")
            data = constructor.construct_document(node)
            docs.append(Document(data, source, lines, node.start_mark.line + 1))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(
            f"malformed YAML: {exc.problem or exc}", source=f"{source}:{line}"
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML always marks its errors
        raise ConfigError(f"malformed YAML: {exc}", source=source) from None
    return docs


def load_file(path: str | Path) -> list[Document]:
    """Read and parse a YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source=str(path)) from None
    return load_documents(text, str(path))


def _field_names(model: type[BaseModel]) -> list[str]:
    names: list[str] = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
        if isinstance(info.validation_alias, str):
            names.append(info.validation_alias)
        elif info.validation_alias is not None:
            for choice in getattr(info.validation_alias, "choices", []):
                names.append(choice if isinstance(choice, str) else str(choice.path[0]))
    return names


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The nested model class that owns the last element of ``loc`` (for "did you mean")."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = _unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg)
        if inner is not None and inner is not arg:
            return inner
    return annotation


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def iter_errors(exc: ValidationError, model: type[BaseModel], doc: Document) -> Iterator[ConfigError]:
    """Turn each pydantic error into a ConfigError with file:line, field and a "did you mean"."""
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field_name = _dotted(loc) or "<document>"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), _field_names(owner), n=1, cutoff=0.6)
                if close:
                    hint = f" (did you mean '{close[0]}'?)"
            message = f"unknown field '{loc[-1]}'{hint}"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        elif message.startswith("Assertion failed, "):
            message = message[len("Assertion failed, ") :]
        yield ConfigError(f"{field_name}: {message}", source=doc.where(loc), field=field_name)


def validate_document(model: type[M], doc: Document, *, what: str) -> M:
    """Validate ``doc`` as ``model``; all problems are reported together in one ConfigError."""
    if not isinstance(doc.data, dict):
        raise ConfigError(f"a {what} must be a YAML mapping, got {type(doc.data).__name__}", source=doc.where(()))
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        errors = list(iter_errors(exc, model, doc))
        first = errors[0]
        if len(errors) == 1:
            raise first from None
        detail = "\n".join(f"  {e}" for e in errors)
        raise ConfigError(
            f"{len(errors)} problems in {what}:\n{detail}",
            source=first.context.get("source"),
            field=first.context.get("field"),
            errors=[e.to_dict() for e in errors],
        ) from None
