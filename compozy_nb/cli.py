"""The ``compozy-nb`` command: a thin shell over :class:`compozy_nb.Project`.

Every failure prints ``{"status": "failed", "error": {"code", "message", ...}}`` (exec) or one line
``error [CODE]: message`` and exits 1; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compozy_nb.errors import CompozyNbError, ConfigError


def _read_json(source: str, what: str) -> Any:
    """JSON from a literal, ``@file``, a path, or ``-`` (stdin)."""
    if source == "-":
        text = sys.stdin.read()
        origin = "<stdin>"
    elif source.startswith("@") or (not source.lstrip().startswith(("{", "[")) and Path(source).exists()):
        path = Path(source[1:] if source.startswith("@") else source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
        origin = str(path)
    else:
        text, origin = source, f"<{what}>"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc.msg}", source=f"{origin}:{exc.lineno}") from None


def _print(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def cmd_exec(args: argparse.Namespace) -> int:
    """Execute one task request (the seed's execute body) and print the result."""
    from compozy_nb.project import Project

    try:
        project = Project.load(args.project, redis_url=args.redis)
        bodies: list[Any] = []
        for source in args.request:
            body = _read_json(source, "request")
            bodies.extend(body if isinstance(body, list) else [body])
    except CompozyNbError as exc:
        _print({"status": "failed", "error": exc.to_dict()})
        return 1
    for index, body in enumerate(bodies):
        try:
            if not isinstance(body, dict):
                raise ConfigError(f"request {index} must be a JSON object, got {type(body).__name__}")
            result = project.execute(body)
        except CompozyNbError as exc:
            _print({"status": "failed", "error": exc.to_dict()})
            return 1
        _print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="compozy-nb",
        description="Conversation memory for AI agents in Redis (Compozy memory tasks).",
    )
    from compozy_nb import __version__

    parser.add_argument("--version", action="version", version=f"compozy-nb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_exec = sub.add_parser(
        "exec",
        help="execute memory task requests (JSON) in order, in one process, and print each output",
    )
    p_exec.add_argument(
        "request", nargs="+",
        help="request JSON: a file, @file, an inline JSON object, or - for stdin; a JSON list runs each item",
    )
    p_exec.add_argument("--project", default=".", help="project directory (default: .)")
    p_exec.add_argument("--redis", default=None, help="backend URL (redis://, rediss://, embedded://)")
    p_exec.set_defaults(func=cmd_exec)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except CompozyNbError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
