"""``%load_ext compozy_nb``: the ``%compozy`` / ``%%compozy`` magic.

One ``@line_cell_magic`` with ``@no_var_expand`` (IPython would turn ``{{.x}}`` into ``{.x}``) over private
functions; arguments are split with ``shlex``; every error becomes a short ``UsageError`` here, at the
boundary, and nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Bool, Int, Unicode

from compozy_nb.errors import CompozyNbError
from compozy_nb.memory.log import log_source
from compozy_nb.notebook.views import DISPLAY

if TYPE_CHECKING:
    from compozy_nb.memory.operations import Operation

HELP = """\
%%compozy [--replace]          YAML (memory resources, workflows; several --- documents) → registered
%compozy connect [URL]         use Redis at URL (redis://, rediss://, redis+cluster://), embedded:// or
                               embedded:///path/file.json (kept on disk)
%compozy load DIR              load a project (DIR/compozy.yaml + autoload) as the current project
%compozy list                  memory resources and workflows of the current project
%compozy project [-o VAR]      the current Project: name, namespace, backend, definitions
%compozy use $project          make a Project built in Python the current one
%compozy show ID               one resource or workflow (summary and YAML)
%compozy run WORKFLOW [--input JSON|$var] [-o VAR]
%compozy memory OP REF (--key K | --var NAME=VALUE ...) [options] [-o VAR]
        OP: read write append delete flush health clear stats     (%compozy memory OP --help)
%compozy memory ls [REF] [--pattern GLOB]    stored instances with their stats
%compozy inspect [--pattern GLOB]            the interactive memory inspector (ipywidgets)
%compozy help                  this text; %compozy SUBCOMMAND --help for one subcommand
{name} in a line is the value of the Python variable `name` (keys, --var values); --payload/--input take
JSON or $variable. A # starts a comment. Settings: %config Compozy.redis_url / display_limit / progress."""

MEMORY_OPS = ("read", "write", "append", "delete", "flush", "health", "clear", "stats", "ls", "log")
_INTERPOLATION = re.compile(r"(?<!\{)\{([A-Za-z_]\w*)\}(?!\})")
_RAW_VALUES = ("--payload", "--input")


class _HelpShown(Exception):  # noqa: N818 - a signal, not an error
    """argparse printed a --help text: nothing else to do."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status == 0:
            raise _HelpShown
        raise UsageError(message or "%compozy: see %compozy help")


def _instance_options(p: argparse.ArgumentParser, *, ref_required: bool = True) -> None:
    p.add_argument("ref", nargs=None if ref_required else "?", help="memory resource id")
    p.add_argument("--key", default=None, help="the memory key (or give --var for the key template)")
    p.add_argument("--var", action="append", default=[], help="NAME=VALUE for the key template (repeatable)")
    p.add_argument("-o", "--output", dest="out", default=None, help="also store the result in this variable")


def _option_arguments(p: argparse.ArgumentParser, op: Operation) -> None:
    """One flag per option of ``op`` (help: the field's description); an option not given stays None, so the
    operation's own default applies."""
    from compozy_nb.memory import operations

    for name, info in operations.arguments(op).items():
        kinds = {a for a in typing.get_args(info.annotation) or (info.annotation,) if a is not type(None)}
        flag, text = operations.flag(name, info), info.description
        if kinds == {bool}:
            action: Any = "store_true" if info.default is False else argparse.BooleanOptionalAction
            p.add_argument(flag, dest=name, action=action, default=None, help=text)
        elif typing.get_origin(next(iter(kinds))) is list:
            p.add_argument(flag, dest=name, action="append", default=None, help=text)
        else:
            kind = next((k for k in (int, float) if k in kinds), str)
            p.add_argument(flag, dest=name, type=kind, default=None, help=text)


def _memory_parser(sub: Any) -> None:
    memory = sub.add_parser("memory", help="run a memory operation", description="Run a memory operation.")
    ops = memory.add_subparsers(dest="op", parser_class=_Parser, metavar="OP")
    ops.required = True
    from compozy_nb.memory import operations

    for op in operations.OPERATIONS.values():  # the 8 operations and their options come from the registry
        p = ops.add_parser(op.name, help=op.summary)
        _instance_options(p)
        if op.payload:
            p.add_argument("--payload", default=None, help="JSON message, list of messages or string, or $variable")
        _option_arguments(p, op)
        if op.name == "stats":
            p.add_argument("--pattern", default=None, help="stats of every instance whose key matches GLOB")
    p = ops.add_parser("log", help="the operation log as a timeline DataFrame")
    _instance_options(p)
    p.add_argument("--since", default=None, help="events from then on: ms since the epoch or an event id")
    p.add_argument("--limit", type=int, default=None, help="at most N events")
    p = ops.add_parser("ls", help="stored instances matching a pattern, with stats")
    p.add_argument("ref", nargs="?", default=None, help="memory resource (its limits and key variables)")
    p.add_argument("--pattern", default="*", help="key GLOB (default *)")
    p.add_argument("-o", "--output", dest="out", default=None, help="also store the table in this variable")


def _parser() -> _Parser:
    parser = _Parser(prog="%compozy", description="compozy-nb: memories and workflows in a notebook.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="SUBCOMMAND")
    p = sub.add_parser("connect", help="switch backend", description="Use another backend (closes the old one).")
    p.add_argument("url", nargs="?", default=None, help="redis://…, embedded://, embedded:///path/file.json")
    p = sub.add_parser("load", help="load a project directory", description="Load DIR/compozy.yaml + autoload.")
    p.add_argument("directory")
    sub.add_parser("list", help="resources and workflows")
    p = sub.add_parser("project", help="the current project (name, namespace, backend)")
    p.add_argument("-o", "--output", dest="var", default=None, help="store the Project in this variable")
    p = sub.add_parser("use", help="make a Project variable current")
    p.add_argument("value", help="$variable holding a compozy_nb.Project")
    p = sub.add_parser("show", help="one resource or workflow with its YAML")
    p.add_argument("id")
    sub.add_parser("help", help="the overview")
    p = sub.add_parser("run", help="run a workflow", description="Run a workflow; the run JSON as a table.")
    p.add_argument("workflow")
    p.add_argument("--input", default=None, help="JSON object or $variable")
    p.add_argument("-o", "--output", dest="var", default=None, help="also store the run in this variable")
    _memory_parser(sub)
    p = sub.add_parser("inspect", help="interactive memory inspector")
    p.add_argument("--pattern", default="*", help="key GLOB (default *)")
    _simulate_parser(sub)
    return parser


def _simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="what-if simulator", description="Replay DF under each --resource.")
    p.add_argument("frame", help="the conversations DataFrame variable (DF or $DF)")
    p.add_argument("--resource", action="append", default=[], required=True, help="a memory resource (repeat)")
    read = p.add_mutually_exclusive_group()
    read.add_argument("--max-tokens", dest="max_tokens", type=int, default=None, help="agent reads this budget")
    read.add_argument("--last", type=int, default=None, help="agent reads the newest N messages")
    p.add_argument("--price", type=float, default=None, help="price per 1,000 tokens sent")
    p.add_argument("--workers", type=int, default=None, help="processes (default: by input size)")
    p.add_argument("--backend", default="embedded://", help="embedded:// (default) or a Redis URL")
    p.add_argument("-o", "--output", dest="out", default=None, help="also store the Simulation in this variable")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))


class _MaskedUrl(Unicode):  # type: ignore[type-arg]
    """A URL setting whose repr (``%config Compozy``) hides the password; the value itself is unchanged."""

    def validate(self, obj: Any, value: Any) -> Any:
        from compozy_nb._secrets import MaskedStr

        return MaskedStr(super().validate(obj, value))


@magics_class
class Compozy(Magics):
    """The ``%compozy`` magic. Configure with ``%config Compozy.<name> = value``."""

    redis_url = _MaskedUrl(
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

        args = shlex.split(line, comments=True)
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
            argv = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UsageError(f"%compozy: cannot parse the line: {exc}") from None
        if not argv:
            raise UsageError("%compozy: give a subcommand (see %compozy help)")
        try:
            args = _parser().parse_args(self._interpolate(argv))
        except _HelpShown:
            return None
        handler = getattr(self, f"_cmd_{args.command}")
        return handler(args)

    def _interpolate(self, argv: list[str]) -> list[str]:
        """Replace ``{name}`` with the value of the notebook variable ``name`` (jupysql's convention) in every
        argument except JSON values (``--payload``/``--input``, which keep ``$var``); ``{{.x}}`` is left alone."""
        out = []
        raw = False
        for token in argv:
            if raw or token.startswith(tuple(f"{o}=" for o in _RAW_VALUES)):
                out.append(token)
            else:
                out.append(_INTERPOLATION.sub(self._variable_text, token))
            raw = token in _RAW_VALUES
        return out

    def _variable_text(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in self._user_ns:
            raise UsageError(f"%compozy: {{{name}}} refers to a variable that is not defined")
        return str(self._user_ns[name])

    def _cmd_help(self, args: argparse.Namespace) -> None:
        print(HELP)

    def _cmd_connect(self, args: argparse.Namespace) -> Any:
        from compozy_nb.backends import EMBEDDED_URL, connect

        backend = connect(args.url or self.redis_url or EMBEDDED_URL)
        previous = self.project._backend
        self.project.use_backend(backend)
        if previous is not None and previous is not backend:
            previous.close()
        print(f"connected: {backend.display_url} ({backend.kind})")

    def _cmd_load(self, args: argparse.Namespace) -> Any:
        from compozy_nb.notebook.display import DefinitionSummary
        from compozy_nb.project import Project

        root = Path(args.directory).expanduser()
        if not (root / "compozy.yaml").is_file():
            where = "does not exist" if not root.is_dir() else "has no compozy.yaml"
            raise UsageError(f"%compozy load: {str(root)!r} {where}; the current project is unchanged")
        previous = self._project
        project = Project.load(root, redis_url=self.redis_url or None)
        if previous is not None:
            if previous._backend is not None and not self.redis_url:
                project.use_backend(previous.backend)
            _carry_inline_definitions(previous, project)
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
        from compozy_nb.notebook.frames import stats_frame

        project = self.project
        if args.op == "ls" or (args.op == "stats" and args.pattern):
            pattern = args.pattern or "*"
            template = project.resource(args.ref).key if args.ref else [r.key for r in project.resources.values()]
            rows = project.instances(pattern, memory_ref=args.ref)
            frame = stats_frame(rows, template, caption=f"{len(rows)} instances matching {pattern!r}")
            self._store(args.out, frame)
            return frame
        mem = project.memory(args.ref, key=args.key, **self._key_variables(args))
        result = self._operate(mem, args)
        if args.op in ("read", "log"):
            value = result.to_pandas()
        elif args.op == "stats":
            value = stats_frame([result], mem.resource.key, single=True)
        else:
            value = result
        self._store(args.out, value)
        return value

    def _key_variables(self, args: argparse.Namespace) -> dict[str, str]:
        variables = {}
        for item in args.var:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"%compozy memory: --var needs NAME=VALUE, got {item!r}")
            variables[name] = value
        if args.key and variables:
            raise UsageError("%compozy memory: give --key or --var, not both")
        if not args.key and not variables:
            resource = self.project.resource(args.ref)
            if resource.key is None or "{{" in resource.key:
                raise UsageError("%compozy memory: give --key K or --var NAME=VALUE for the key template")
        return variables

    def _cmd_inspect(self, args: argparse.Namespace) -> Any:
        from compozy_nb.notebook.inspector import inspect

        return inspect(self.project, pattern=args.pattern)

    # ------------------------------------------------------------------ completion
    def complete(self, line: str, symbol: str) -> list[str]:
        """Completions for the word ``symbol`` being typed at the end of ``line`` (a ``%compozy`` line)."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            return []
        words = words[1:] if words and words[0].lstrip("%") == "compozy" else words
        done = words[:-1] if symbol and words and words[-1] == symbol else words
        parser: argparse.ArgumentParser = _parser()
        positional = []
        for word in done:
            sub = _subparsers(parser)
            if word in sub:
                parser = sub[word]
            elif not word.startswith("-"):
                positional.append(word)
        choices = list(_subparsers(parser))
        if symbol.startswith("-"):
            choices = _options(parser)
        elif not choices and not positional:
            choices = self._refs(parser.prog)
        return [c for c in choices if c.startswith(symbol)]

    def _refs(self, prog: str) -> list[str]:
        project = self._project
        if project is None:
            return []
        if prog.endswith(" run"):
            return sorted(project.workflows)
        if prog.endswith(" show"):
            return sorted([*project.resources, *project.workflows])
        if " memory " in prog:
            return sorted(project.resources)
        return []

    def _operate(self, mem: Any, args: argparse.Namespace) -> Any:
        from compozy_nb.memory import operations

        if args.op == "log":
            since = int(args.since) if args.since and args.since.isdigit() else args.since
            return mem.log(since=since, limit=args.limit)
        op = operations.OPERATIONS[args.op]
        if op.payload:
            payload = self._value(args.payload, "--payload")
            if payload is None:
                raise UsageError(f"%compozy memory {args.op}: --payload is required")
            return operations.call(mem, op.name, payload)
        return operations.call(mem, op.name, options={name: getattr(args, name) for name in operations.arguments(op)})

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


_STATE = "_compozy_nb_project"


def _carry_inline_definitions(previous: Any, project: Any) -> None:
    """Keep the resources and workflows defined in cells or Python (not in files) across ``load``; say which
    ones the loaded project replaces."""
    kept, shadowed = [], []
    for rid, resource in previous.resources.items():
        if previous.sources.get(rid, "").startswith("<"):
            if rid in project.resources:
                shadowed.append(rid)
            else:
                project.add_memory(resource, source=previous.sources[rid])
                kept.append(rid)
    for wid, workflow in previous.workflows.items():
        doc = previous.workflow_docs.get(wid)
        if doc is None or str(doc.source).startswith("<"):
            if wid in project.workflows:
                shadowed.append(wid)
            else:
                project.add_workflow(workflow, doc=doc)
                kept.append(wid)
    if kept:
        print(f"compozy-nb: kept the definitions made in this notebook: {', '.join(kept)}")
    if shadowed:
        print(f"compozy-nb: the loaded project replaces the notebook's {', '.join(shadowed)}")


def _complete(shell: Any, event: Any) -> list[str]:
    magics = shell.magics_manager.registry.get("Compozy")
    if magics is None:
        return []
    completions: list[str] = magics.complete(event.line, event.symbol)
    return completions


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext compozy_nb`` (and ``%reload_ext``): registers the magic and its configurable once,
    and keeps the project of an earlier load (resources, workflows, backend)."""
    stale = [c for c in ipython.configurables if type(c).__name__ == "Compozy"]
    previous = getattr(ipython, _STATE, None) or next((c._project for c in reversed(stale) if c._project), None)
    for configurable in stale:
        ipython.configurables.remove(configurable)
    magics = Compozy(ipython)
    magics._project = previous
    ipython.register_magics(magics)
    if magics not in ipython.configurables:  # IPython's Magics usually adds itself
        ipython.configurables.append(magics)
    if not getattr(ipython, "_compozy_nb_completer", False):
        for magic in ("%compozy", "%%compozy"):  # a line, and the first line of a cell
            ipython.set_hook("complete_command", lambda _self, event: _complete(ipython, event), str_key=magic)
        ipython._compozy_nb_completer = True
    if previous is not None:
        info = previous.describe()
        print(
            f"compozy-nb: reloaded; kept project {info['name']!r} ({len(info['resources'])} resources, "
            f"{len(info['workflows'])} workflows, backend {info['backend']})"
        )


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext compozy_nb``: removes the magic and its configurable; the project is kept for a
    later load."""
    magics = ipython.magics_manager.registry.pop("Compozy", None)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("compozy", None)
    if magics is not None:
        setattr(ipython, _STATE, magics._project)
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
