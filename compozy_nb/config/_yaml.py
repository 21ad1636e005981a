"""YAML loading that remembers where every value came from, and pydantic errors turned into file:line."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from compozy_nb.errors import CompozyNbError, ConfigError
from compozy_nb.limits import MAX_DEPTH, check_depth, depth_error

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)
MAX_EXPANDED_NODES = 100_000
"""How many YAML nodes a document may hold once its aliases are expanded (a ~1 KB "billion laughs"
expands to billions): checked on the composed node graph, before any Python object or model is built."""


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


class FieldError(ValueError):
    """A validation error that knows which field (below the validator's own location) is wrong, so the
    error points at that line."""

    def __init__(self, message: str, *loc: str | int) -> None:
        super().__init__(message)
        self.loc: Loc = tuple(loc)


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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a recursive alias (``a: &a [*a]``) and a document whose aliases expand past
    :data:`MAX_EXPANDED_NODES` nodes. Shared (aliased) nodes are sized once, so this is linear in the text.

    Raises:
        ConfigError: with the file:line of the recursive or oversized node.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_EXPANDED_NODES:
                raise ConfigError(
                    f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} nodes (an alias bomb?)",
                    source=f"{source}:{node.start_mark.line + 1}",
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(
                "recursive YAML alias (a node that contains itself)", source=f"{source}:{node.start_mark.line + 1}"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


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
            check_expansion(node, source)
            lines: dict[Loc, int] = {}
            _walk(node, (), lines)
            constructor = _SafeLineLoader("")
            data = constructor.construct_document(node)
            docs.append(Document(data, source, lines, node.start_mark.line + 1))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at_end = mark is not None and mark.index >= len(text.rstrip())
        if at_end and exc.context_mark is not None:  # e.g. an unterminated quote: point where it opened
            mark = exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"malformed YAML: {exc.problem or exc}", source=f"{source}:{line}") from None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML always marks its errors
        raise ConfigError(f"malformed YAML: {exc}", source=source) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise depth_error(MAX_DEPTH, source, ConfigError) from None
    for doc in docs:
        check_depth(doc.data, MAX_DEPTH, f"{doc.source}:{doc.start_line}", ConfigError)
    return docs


def load_file(path: str | Path) -> list[Document]:
    """Read and parse a YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (invalid byte at offset {exc.start})", source=str(path)) from None
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


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation can hold (through Optional, list, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The nested model class that owns the last element of ``loc`` (for "did you mean"); a union member is
    picked by the discriminator tag pydantic puts in the location."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if len(candidates) > 1:
            tagged = [c for c in candidates if _tag_of(c) == part]
            if tagged:
                candidates = tagged
                continue
        owner = candidates[0] if len(candidates) == 1 else None
        info = owner.model_fields.get(str(part)) if owner else None
        if info is None:
            return None
        candidates = _models_in(info.annotation)
        if not candidates:
            return None
    return candidates[0] if len(candidates) == 1 else None


def _tag_of(model: type[BaseModel]) -> Any:
    info = model.model_fields.get("type")
    args = typing.get_args(info.annotation) if info else ()
    return args[0] if len(args) == 1 else None


def _data_loc(data: Any, loc: Loc) -> Loc:
    """``loc`` without the parts pydantic adds that are not in the document (union tags)."""
    out: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(current, dict):
            if part in current:
                current = current[part]
            elif not last:
                continue
            out.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            out.append(part)
        else:
            out.append(part)
            current = None
    return tuple(out)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def iter_errors(
    exc: ValidationError, model: type[BaseModel], doc: Document, *, keep_codes: bool = False
) -> Iterator[CompozyNbError]:
    """Turn each pydantic error into a ConfigError with file:line, field and a "did you mean" (with
    ``keep_codes``, an error of another kind raised by a validator, e.g. a TemplateError, keeps its class)."""
    for err in exc.errors(include_url=False):
        raw_loc: Loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        cause = (err.get("ctx") or {}).get("error")
        extra = getattr(cause, "loc", None)
        if isinstance(extra, tuple):
            raw_loc = (*raw_loc, *extra)
        if err["type"] == "union_tag_invalid":
            raw_loc = (*raw_loc, "type")
        loc = _data_loc(doc.data, raw_loc)
        field_name = _dotted(loc) or "<document>"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, raw_loc)
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
        if keep_codes and isinstance(cause, CompozyNbError) and not isinstance(cause, ConfigError):
            yield type(cause)(f"{field_name}: {cause.message}", source=doc.where(loc), field=field_name)
            continue
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
