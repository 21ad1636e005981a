"""``%load_ext compozy_nb``: the ``%compozy`` / ``%%compozy`` magic.

One ``@line_cell_magic`` with ``@no_var_expand`` (IPython would turn ``{{.x}}`` into ``{.x}``) over private
functions; arguments are split with ``shlex``; every error becomes a short ``UsageError`` here, at the
boundary, and nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Bool, Int, Unicode

from compozy_nb.errors import CompozyNbError
from compozy_nb.memory.log import log_source
from compozy_nb.results import DISPLAY

HELP = """\
%%compozy [--replace]          YAML (memory resources, workflows; several --- documents) → registered
%compozy connect [URL]         use Redis at URL (redis://, rediss://, redis+cluster://) or embedded://
%compozy load DIR              load a project (compozy.yaml + autoload) as the current project
%compozy list                  memory resources and workflows of the current project
%compozy project [-o VAR]      the current Project object (use it from Python)
%compozy use $project          make a Project built in Python the current one
%compozy show ID               one resource or workflow (summary and YAML)
%compozy run WORKFLOW [--input JSON|$var] [-o VAR]
%compozy memory OP REF (--key K | --var NAME=VALUE ...) [--limit N] [--offset N] [--last N]
        [--max-tokens N] [--archive] [--payload JSON|$var] [--strategy S] [--dry-run] [--force]
        [--confirm] [--backup] [--include-content] [--pattern GLOB] [-o VAR]
        [--since MS|ID]
        OP: read write append delete flush health clear stats log (the operation log: a timeline DataFrame)
%compozy simulate DF --resource A --resource B [--max-tokens N | --last N] [--price P] [--workers N] [-o VAR]
        replay the conversations in DataFrame DF under each resource (what-if simulator)
%compozy help                  this text
Settings: %config Compozy.redis_url / Compozy.display_limit / Compozy.progress (or COMPOZY_* variables)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%compozy: {message} (see %compozy help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or "%compozy: see %compozy help")


def _parser() -> _Parser:
    parser = _Parser(prog="%compozy", add_help=False)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("connect", add_help=False)
    p.add_argument("url", nargs="?", default=None)
    p = sub.add_parser("load", add_help=False)
    p.add_argument("directory")
    sub.add_parser("list", add_help=False)
    p = sub.add_parser("project", add_help=False)
    p.add_argument("-o", "--output", dest="var", default=None)
    p = sub.add_parser("use", add_help=False)
    p.add_argument("value")
    p = sub.add_parser("show", add_help=False)
    p.add_argument("id")
    sub.add_parser("help", add_help=False)
    p = sub.add_parser("run", add_help=False)
    p.add_argument("workflow")
    p.add_argument("--input", default=None)
    p.add_argument("-o", "--output", dest="var", default=None)
    p = sub.add_parser("memory", add_help=False)
    p.add_argument("op", choices=["read", "write", "append", "delete", "flush", "health", "clear", "stats", "log"])
    p.add_argument("ref")
    p.add_argument("--key", default=None)
    p.add_argument("--var", action="append", default=[])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--last", type=int, default=None)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=None)
    p.add_argument("--archive", action="store_true")
    p.add_argument("--payload", default=None)
    p.add_argument("--strategy", default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--dry-run", dest="dry_run", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--confirm", action="store_true")
    p.add_argument("--backup", action="store_true")
    p.add_argument("--include-content", dest="include_content", action="store_true")
    p.add_argument("--pattern", default=None)
    p.add_argument("--since", default=None)
    p.add_argument("-o", "--output", dest="out", default=None)
    _simulate_parser(sub)
    return parser


def _simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", add_help=False)
    p.add_argument("frame")
    p.add_argument("--resource", action="append", default=[], required=True)
    read = p.add_mutually_exclusive_group()
    read.add_argument("--max-tokens", dest="max_tokens", type=int, default=None)
    read.add_argument("--last", type=int, default=None)
    p.add_argument("--price", type=float, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--backend", default="embedded://")
    p.add_argument("-o", "--output", dest="out", default=None)


@magics_class
class Compozy(Magics):
    """The ``%compozy`` magic. Configure with ``%config Compozy.<name> = value``."""

    redis_url = Unicode(
        os.environ.get("COMPOZY_REDIS_URL", ""), help="Backend URL used when none is given (empty: embedded)."
    ).tag(config=True)
    display_limit = Int(int(os.environ.get("COMPOZY_DISPLAY_LIMIT", "50")), help="Rows shown in HTML tables.").tag(
        config=True
    )
    progress = Bool(
        os.environ.get("COMPOZY_PROGRESS", "1") not in ("0", "false", "no"), help="Progress bars in run_many."
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._project: Any = None
        DISPLAY["limit"] = self.display_limit
        DISPLAY["progress"] = self.progress
        self.observe(lambda change: DISPLAY.__setitem__("limit", change["new"]), names="display_limit")
        self.observe(lambda change: DISPLAY.__setitem__("progress", change["new"]), names="progress")

    # ------------------------------------------------------------------ state
    @property
    def _user_ns(self) -> dict[str, Any]:
        if self.shell is None:
            raise UsageError("%compozy needs an IPython shell")
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    @property
    def project(self) -> Any:
        """The current project (empty until a cell defines something or ``load`` is used)."""
        if self._project is None:
            from compozy_nb.project import Project

            self._project = Project("default", redis_url=self.redis_url or None)
        return self._project

    # ------------------------------------------------------------------ entry
    @no_var_expand
    @line_cell_magic
    def compozy(self, line: str, cell: str | None = None) -> Any:
        """Define resources (cell) or run a subcommand (line). ``%compozy help`` lists them."""
        try:
            with log_source("magic"):
                if cell is not None:
                    return self._define(line, cell)
                return self._command(line)
        except CompozyNbError as exc:
            raise UsageError(f"[{exc.code}] {exc}") from None

    # ------------------------------------------------------------------ cell
    def _define(self, line: str, cell: str) -> Any:
        from compozy_nb.notebook.display import DefinitionSummary

        args = shlex.split(line)
        unknown = [a for a in args if a != "--replace"]
        if unknown:
            raise UsageError(f"%%compozy: unknown option {unknown[0]!r} (only --replace)")
        cell_no = getattr(self.shell, "execution_count", None)
        ids = self.project.add_yaml(
            cell, source=f"<cell {cell_no}>" if cell_no else "<cell>", replace="--replace" in args
        )
        return DefinitionSummary(self.project, ids)

    # ------------------------------------------------------------------ line
    def _command(self, line: str) -> Any:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%compozy: cannot parse the line: {exc}") from None
        if not argv:
            raise UsageError("%compozy: give a subcommand (see %compozy help)")
        args = _parser().parse_args(argv)
        handler = getattr(self, f"_cmd_{args.command}")
        return handler(args)

    def _cmd_help(self, args: argparse.Namespace) -> None:
        print(HELP)

    def _cmd_connect(self, args: argparse.Namespace) -> Any:
        from compozy_nb.backends import EMBEDDED_URL, connect

        backend = connect(args.url or self.redis_url or EMBEDDED_URL)
        self.project.use_backend(backend)
        print(f"connected: {backend.display_url} ({backend.kind})")

    def _cmd_load(self, args: argparse.Namespace) -> Any:
        from compozy_nb.notebook.display import DefinitionSummary
        from compozy_nb.project import Project

        previous = self._project
        project = Project.load(args.directory, redis_url=self.redis_url or None)
        if previous is not None and previous._backend is not None and not self.redis_url:
            project.use_backend(previous.backend)
        self._project = project
        return DefinitionSummary(project, [*project.resources, *project.workflows])

    def _cmd_project(self, args: argparse.Namespace) -> Any:
        self._store(args.var, self.project)
        return self.project

    def _cmd_use(self, args: argparse.Namespace) -> Any:
        from compozy_nb.notebook.display import DefinitionSummary
        from compozy_nb.project import Project

        if not args.value.startswith("$"):
            raise UsageError("%compozy use: pass a variable holding a Project, e.g. %compozy use $project")
        project = self._value(args.value, "use")
        if not isinstance(project, Project):
            raise UsageError(f"%compozy use: {args.value} is a {type(project).__name__}, not a compozy_nb.Project")
        self._project = project
        return DefinitionSummary(project, [*project.resources, *project.workflows])

    def _cmd_list(self, args: argparse.Namespace) -> Any:
        from compozy_nb.notebook.display import DefinitionSummary

        return DefinitionSummary(self.project, [*self.project.resources, *self.project.workflows])

    def _cmd_show(self, args: argparse.Namespace) -> Any:
        from compozy_nb.notebook.display import DefinitionSummary

        if args.id not in self.project.resources and args.id not in self.project.workflows:
            known = ", ".join(sorted([*self.project.resources, *self.project.workflows])) or "nothing defined yet"
            raise UsageError(f"%compozy show: no memory resource or workflow '{args.id}' (defined: {known})")
        return DefinitionSummary(self.project, [args.id], with_yaml=True)

    def _value(self, text: str | None, what: str) -> Any:
        """A JSON literal or ``$name`` (a variable of the notebook)."""
        if text is None:
            return None
        if text.startswith("$"):
            name = text[1:]
            if name not in self._user_ns:
                raise UsageError(f"%compozy: {what} refers to ${name}, which is not defined")
            return self._user_ns[name]
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"%compozy: {what} is not valid JSON ({exc.msg}); quote it, or pass $variable") from None

    def _store(self, var: str | None, value: Any) -> None:
        if var:
            if not var.isidentifier():
                raise UsageError(f"%compozy: -o needs a Python name, got {var!r}")
            self._user_ns[var] = value

    def _cmd_run(self, args: argparse.Namespace) -> Any:
        data = self._value(args.input, "--input") or {}
        if not isinstance(data, dict):
            raise UsageError("%compozy run: --input must be a JSON object or a dict variable")
        run = self.project.run(args.workflow, data)
        self._store(args.var, run)
        return run

    def _cmd_memory(self, args: argparse.Namespace) -> Any:
        project = self.project
        if args.op == "stats" and args.pattern:
            import pandas as pd

            rows = project.instances(args.pattern, memory_ref=args.ref)
            frame = pd.DataFrame([{k: v for k, v in r.items() if k != "operation"} for r in rows])
            self._store(args.out, frame)
            return frame
        variables = {}
        for item in args.var:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"%compozy memory: --var needs NAME=VALUE, got {item!r}")
            variables[name] = value
        if args.key and variables:
            raise UsageError("%compozy memory: give --key or --var, not both")
        if not args.key and not variables:
            resource = project.resource(args.ref)
            if resource.key is None or "{{" in resource.key:
                raise UsageError("%compozy memory: give --key K or --var NAME=VALUE for the key template")
        mem = project.memory(args.ref, key=args.key, **variables)
        result = self._operate(mem, args)
        value = result.to_pandas() if args.op in ("read", "stats", "log") else result
        self._store(args.out, value)
        return value

    def _operate(self, mem: Any, args: argparse.Namespace) -> Any:
        payload = self._value(args.payload, "--payload")
        if args.op in ("write", "append"):
            if payload is None:
                raise UsageError(f"%compozy memory {args.op}: --payload is required")
            return mem.write(payload) if args.op == "write" else mem.append(payload)
        if args.payload is not None:
            raise UsageError(f"%compozy memory {args.op}: --payload is only for write and append")
        if args.op == "log":
            since = int(args.since) if args.since and args.since.isdigit() else args.since
            return mem.log(since=since, limit=args.limit)
        if args.op == "read":
            return mem.read(args.limit, args.offset, last=args.last, max_tokens=args.max_tokens, archive=args.archive)
        if args.op == "flush":
            return mem.flush(args.strategy, dry_run=args.dry_run, force=args.force, threshold=args.threshold)
        if args.op == "clear":
            return mem.clear(confirm=args.confirm, backup=args.backup)
        if args.op == "stats":
            return mem.stats(include_content=args.include_content)
        if args.op == "health":
            return mem.health()
        return mem.delete()

    def _cmd_simulate(self, args: argparse.Namespace) -> Any:
        from compozy_nb.simulation import simulate

        frame = self._value(args.frame if args.frame.startswith("$") else "$" + args.frame, "simulate")
        read = {"max_tokens": args.max_tokens, "last": args.last}
        result = simulate(
            frame,
            [self.project.resource(ref) for ref in args.resource],
            read={k: v for k, v in read.items() if v is not None} or None,
            price_per_1k_tokens=args.price,
            backend=args.backend,
            max_workers=args.workers,
            progress=bool(self.progress),
        )
        self._store(args.out, result)
        return result


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext compozy_nb``."""
    magics = Compozy(ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext compozy_nb``."""
    ipython.magics_manager.registry.pop("Compozy", None)
