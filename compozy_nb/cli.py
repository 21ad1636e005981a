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
from compozy_nb.limits import MAX_DEPTH, check_depth, depth_error
from compozy_nb.memory.log import attributed


def _read_json(source: str, what: str) -> Any:
    """JSON from a literal, ``@file``, a path, or ``-`` (stdin), UTF-8 and nested at most
    :data:`~compozy_nb.limits.MAX_DEPTH` levels.

    Raises:
        ConfigError: unreadable, not UTF-8 or not JSON (with ``file:line``).
        InvalidPayloadError: nested too deeply.
    """
    if source == "-":
        origin = "<stdin>"
        raw = getattr(sys.stdin, "buffer", None)  # a replaced stdin (StringIO) is already text
        text = _decode(raw.read(), what, origin) if raw is not None else sys.stdin.read()
    elif source.startswith("@") or (not source.lstrip().startswith(("{", "[")) and _is_file(source)):
        path = Path(source[1:] if source.startswith("@") else source)
        origin = str(path)
        try:
            text = _decode(path.read_bytes(), what, origin)
        except OSError as exc:
            raise ConfigError(f"cannot read {what} file {origin!r}: {exc.strerror}") from None
    else:
        text, origin = source, f"<{what}>"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc.msg}", source=f"{origin}:{exc.lineno}") from None
    except RecursionError:
        raise depth_error(MAX_DEPTH, what) from None
    check_depth(value, MAX_DEPTH, what)
    return value


def _is_file(source: str) -> bool:
    try:
        return Path(source).exists()
    except (OSError, ValueError):  # a name too long, or with a NUL byte
        return False


def _decode(data: bytes, what: str, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text (invalid byte at offset {exc.start})", source=origin) from None


def _print(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def cmd_exec(args: argparse.Namespace) -> int:
    """Execute one task request (the seed's execute body) and print the result."""
    from compozy_nb.project import Project

    bodies: list[Any] = []
    for source in args.request:  # unreadable input: one "error [CODE]: ..." line (main)
        body = _read_json(source, "request")
        bodies.extend(body if isinstance(body, list) else [body])
    try:
        project = Project.load(args.project, redis_url=args.redis)
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


def _load(args: argparse.Namespace) -> Any:
    from compozy_nb.project import Project

    return Project.load(args.project, redis_url=getattr(args, "redis", None))


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate every resource and workflow of a project; print each problem with file:line."""
    from compozy_nb.project import Project

    try:
        project = Project.load_unchecked(args.project)
    except CompozyNbError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    problems = project.validate()
    for problem in problems:
        print(f"error [{problem.code}]: {problem}", file=sys.stderr)
    from compozy_nb.memory.keys import project_key_warnings

    for warning in project_key_warnings(project):
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(
        f"ok: {len(project.resources)} memory resource(s), {len(project.workflows)} workflow(s) in "
        f"{args.project} (project '{project.name}')"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a workflow and print the run JSON (exit 1 when it failed)."""
    data = _read_json(args.input, "input") if args.input else {}  # unreadable input: one error line (main)
    try:
        if not isinstance(data, dict):
            raise ConfigError("--input must be a JSON object")
        project = _load(args)
        run = project.run(args.workflow, data)
    except CompozyNbError as exc:
        _print({"status": "failed", "error": exc.to_dict()})
        return 1
    _print(run)
    return 0 if run["status"] == "completed" else 1


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(lines)


def _cell(value: Any, width: int = 60) -> str:
    text = "" if value is None else (json.dumps(value) if isinstance(value, dict | list) else str(value))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_memory_ls(args: argparse.Namespace) -> int:
    """List stored instances matching a pattern, with their stats."""
    rows = _load(args).instances(args.pattern, memory_ref=args.ref)
    if args.json:
        _print(rows)
    else:
        cols = ["key", "message_count", "token_count", "role_distribution", "ttl_seconds", "last_flush"]
        print(_table(rows, cols))
    return 0


def cmd_memory_show(args: argparse.Namespace) -> int:
    """Print one instance's messages and stats."""
    project = _load(args)
    mem = project.memory(args.ref, key=args.key)
    read = mem.read(last=args.last) if args.last else mem.read()
    stats = mem.stats()
    if args.json:
        _print({"read": read, "stats": stats})
        return 0
    rows = [{"position": read["offset"] + i, **m} for i, m in enumerate(read["messages"])]
    print(_table(rows, ["position", "role", "content", "tokens", "ts"]))
    print()
    print(_table([stats], ["key", *STATS_COLUMNS]))
    return 0


def cmd_memory_export(args: argparse.Namespace) -> int:
    """Write one instance's messages to a JSONL (or .parquet) file."""
    out = _load(args).memory(args.ref, key=args.key).export(args.path, archive=args.archive)
    _print(out) if args.json else print(f"exported {out['count']} message(s) to {out['path']}")
    return 0


def cmd_memory_import(args: argparse.Namespace) -> int:
    """Append (or with --replace, write) the messages of an exported file to one instance."""
    out = _load(args).memory(args.ref, key=args.key).import_file(args.path, replace=args.replace)
    if args.json:
        _print(out)
    else:
        added = out["count"] if args.replace else out["appended"]
        print(f"imported {added} message(s) into {out['key']} ({out.get('duplicates', 0)} already there)")
    return 0


STATS_COLUMNS = ("message_count", "token_count", "max_tokens", "token_utilization", "role_distribution", "ttl_seconds")
DEMO_TURNS = (
    "Hi! I'm Ann, my email is ann@example.com.",
    "Can you remember what my name is?",
    "Thanks, that's all for today.",
)


def cmd_demo(args: argparse.Namespace) -> int:
    """A scripted three-turn conversation through the seed's chatbot workflow, then the memory as tables."""
    from compozy_nb.project import Project

    bundled = Path(__file__).resolve().parent / "examples" / "demo"
    root = Path(args.project) if args.project else bundled
    project = Project.load(root, redis_url=args.redis)
    print(f"compozy-nb demo: project '{project.name}' ({root}), backend {project.backend.display_url}")
    user = {"user_id": "demo-user", "session_id": "s1"}
    mem = project.memory("conversation_memory", **user)
    mem.delete()
    for turn, text in enumerate(DEMO_TURNS, start=1):
        run = project.run("chatbot-workflow", {**user, "user_message": text})
        if run["status"] != "completed":
            _print(run)
            return 1
        print(f"\nturn {turn}\n  user:      {text}\n  assistant: {run['output']['reply']}")
    read = mem.read()
    rows = [{"position": i, **m} for i, m in enumerate(read["messages"])]
    print(f"\nmemory {mem.key!r} (privacy redaction applied before storage):")
    print(_table(rows, ["position", "role", "content", "tokens"]))
    print("\nstats:")
    print(_table([dict(mem.stats())], list(STATS_COLUMNS)))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of memory resource, workflow and project files."""
    from compozy_nb.config.memory import MemoryResource
    from compozy_nb.config.project import ProjectSettings
    from compozy_nb.config.workflow import Workflow

    schemas = {
        "memory": MemoryResource.model_json_schema(),
        "workflow": Workflow.model_json_schema(),
        "project": ProjectSettings.model_json_schema(),
    }
    _print(schemas[args.kind] if args.kind else schemas)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the project's workflows and memory operations over HTTP (FastAPI + uvicorn)."""
    from compozy_nb.server import serve_main

    return serve_main(args.project, args.host, args.port, args.redis, body_timeout=args.body_timeout)


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
        "request",
        nargs="+",
        help="request JSON: a file, @file, an inline JSON object, or - for stdin; a JSON list runs each item",
    )
    p_exec.add_argument("--project", default=".", help="project directory (default: .)")
    p_exec.add_argument("--redis", default=None, help="backend URL (redis://, rediss://, embedded://)")
    p_exec.set_defaults(func=cmd_exec)

    p_val = sub.add_parser("validate", help="validate all resources and workflows (file:line errors)")
    p_val.add_argument("--project", default=".", help="project directory (default: .)")
    p_val.set_defaults(func=cmd_validate)

    p_run = sub.add_parser("run", help="run a workflow and print the run JSON")
    p_run.add_argument("workflow", help="workflow id (its name)")
    p_run.add_argument("--project", default=".", help="project directory (default: .)")
    p_run.add_argument("--redis", default=None, help="backend URL")
    p_run.add_argument("--input", default=None, help="input JSON object, or @file")
    p_run.set_defaults(func=cmd_run)

    p_mem = sub.add_parser("memory", help="inspect stored memories")
    mem_sub = p_mem.add_subparsers(dest="memory_command", metavar="SUBCOMMAND", required=True)
    p_ls = mem_sub.add_parser("ls", help="list instances (SCAN) with their stats")
    p_ls.add_argument("--pattern", default="*", help="glob over memory keys, e.g. 'conv:u1:*'")
    p_ls.add_argument("--ref", default=None, help="memory resource whose limits to report")
    p_show = mem_sub.add_parser("show", help="show one instance's messages and stats")
    p_show.add_argument("ref", help="memory resource id")
    p_show.add_argument("--key", required=True, help="the memory key, e.g. conv:u1:s1")
    p_show.add_argument("--last", type=int, default=None, help="only the newest N messages")
    p_export = mem_sub.add_parser("export", help="write an instance's messages to JSONL (or .parquet)")
    p_import = mem_sub.add_parser("import", help="append an exported file's messages (ids kept)")
    for p_m in (p_export, p_import):
        p_m.add_argument("ref", help="memory resource id")
        p_m.add_argument("--key", required=True, help="the memory key, e.g. conv:u1:s1")
        p_m.add_argument("path", help="the file: JSONL, or Parquet when it ends in .parquet")
    p_export.add_argument("--archive", action="store_true", help="export the archive instead")
    p_import.add_argument("--replace", action="store_true", help="replace the content instead of appending")
    p_export.set_defaults(func=cmd_memory_export)
    p_import.set_defaults(func=cmd_memory_import)
    for p_m in (p_ls, p_show, p_export, p_import):
        p_m.add_argument("--project", default=".", help="project directory (default: .)")
        p_m.add_argument("--redis", default=None, help="backend URL")
        p_m.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p_ls.set_defaults(func=cmd_memory_ls)
    p_show.set_defaults(func=cmd_memory_show)

    p_demo = sub.add_parser("demo", help="a scripted three-turn chatbot conversation, memory shown as tables")
    p_demo.add_argument("--project", default=None, help="project directory (default: the bundled example)")
    p_demo.add_argument("--redis", default=None, help="backend URL (default: embedded)")
    p_demo.set_defaults(func=cmd_demo)

    p_serve = sub.add_parser("serve", help="serve workflows and memory operations over HTTP (server extra)")
    p_serve.add_argument("--project", default=".", help="project directory (default: .)")
    p_serve.add_argument(
        "--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; another address needs COMPOZY_API_KEY)"
    )
    p_serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p_serve.add_argument("--redis", default=None, help="backend URL (default: COMPOZY_REDIS_URL, compozy.yaml)")
    p_serve.add_argument(
        "--body-timeout", type=float, default=None, help="seconds allowed to send a request body (default: 30)"
    )
    p_serve.set_defaults(func=cmd_serve)

    p_schema = sub.add_parser("schema", help="JSON Schema of resource, workflow and project files")
    p_schema.add_argument("kind", nargs="?", choices=["memory", "workflow", "project"], default=None)
    p_schema.set_defaults(func=cmd_schema)
    return parser


@attributed("cli")
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
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
