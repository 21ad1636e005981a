"""The documentation is executed, so it cannot drift from the code.

Conventions (documented at the top of docs/README.md): an HTML comment ``<!-- doc: ... -->`` on the line right
before a fenced block says what the block is.

* ``memory`` / ``workflow`` / ``project``: a complete YAML document, validated with the real loaders
  (``Project.add_yaml``; ``load_settings`` for compozy.yaml). Memory resources and workflows are registered, in
  document order, in the page's session project (the example project examples/memory-workflow on a fresh embedded
  backend), so the page's later blocks can use them.
* ``fragment memory|memory-task|task|workflow|project``: part of a document, validated inside a template document.
* ``invalid memory|workflow|project|memory-task``: a document (or task) that must be rejected.
* ``run memory-task [JSON input]``: a memory task fragment, validated, then executed in the page's session with
  ``Project.execute`` (input ``{"user_id": "u1", "session_id": "s1"}`` unless given).
* ``request``: a JSON execute request body (the seed's API), executed the same way.
* ``cli``: a console block; every ``$ compozy-nb ...`` line is run (in-process, a fresh embedded backend per
  command, as separate processes would have) and its output compared with the lines that follow it.
* ``python``: a Python block that must run without error (in the repository root).
* ``notebook``: a notebook cell (magics allowed), run in a real IPython InteractiveShell with the extension loaded,
  on a fresh embedded backend per page; it must not raise.
* ``output`` / ``error``: the exact output map (or error dict) of the block before. ``"<...>"`` is a placeholder:
  as a whole string it matches any value, inside a string it matches any text.
* ``ignore <reason>``: deliberately not checked (e.g. Compozy-only syntax).

Every YAML block under docs/ and examples/ must carry a marker. The execute requests of docs/api/memory-endpoints.md
(``POST /workflows/.../execute`` blocks) run through the real HTTP app and their responses must carry the documented
keys. Every relative link and #anchor of the docs, the READMEs and the notebooks must resolve (GitHub slug rules).
Finally the example project runs through the real ``compozy-nb run`` command in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from compozy_nb import Project
from compozy_nb.backends import reset_embedded
from compozy_nb.config.memory import MemoryResource
from compozy_nb.config.project import ProjectSettings, load_settings
from compozy_nb.errors import CompozyNbError

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLE = REPO / "examples" / "memory-workflow"
API_DOC = DOCS / "api" / "memory-endpoints.md"
CLI = Path(sys.executable).with_name("compozy-nb")
DEFAULT_INPUT = {"user_id": "u1", "session_id": "s1"}
EMBEDDED_NOTICE = "compozy-nb: no Redis URL configured"

MARKER = re.compile(r"^\s*<!--\s*doc:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
KINDS = frozenset(
    [
        "memory",
        "workflow",
        "project",
        "fragment",
        "invalid",
        "run",
        "request",
        "cli",
        "python",
        "notebook",
        "output",
        "error",
        "ignore",
    ]
)


# ---------------------------------------------------------------------------- markdown parsing
@dataclass
class Block:
    """One fenced block of a markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def kind(self) -> str | None:
        return self.marker.split()[0] if self.marker else None

    @property
    def args(self) -> str:
        return self.marker.split(None, 1)[1] if self.marker and " " in self.marker else ""


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, each with the ``doc:`` marker on the line before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence, lang = match.groups()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index])
            index += 1
        marker = MARKER.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(path, start + 1, lang.lower(), "\n".join(body) + "\n", marker.group(1) if marker else None))
        index += 1
    return blocks


def markdown_files() -> list[Path]:
    """Markdown files whose blocks are checked: docs/** and the example project's README."""
    return sorted([*DOCS.rglob("*.md"), *REPO.joinpath("examples").rglob("*.md")])


# ---------------------------------------------------------------------------- matching with placeholders
def mismatch(expected: Any, actual: Any, where: str = "$", *, keys_only: bool = False) -> str | None:
    """Why ``actual`` does not match ``expected`` (None when it does).

    Exact comparison, except that a string placeholder ``"<...>"`` matches any value and placeholders inside a
    string match any text. With ``keys_only``, maps must hold at least the expected keys and values are only
    compared for ``status`` and ``code``.
    """
    if isinstance(expected, str) and PLACEHOLDER.fullmatch(expected):
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected a map, got {json.dumps(actual)[:120]}"
        missing = [k for k in expected if k not in actual]
        extra = [] if keys_only else [k for k in actual if k not in expected]
        if missing or extra:
            return f"{where}: keys differ (missing {missing}, unexpected {extra})"
        for key, value in expected.items():
            if keys_only and not isinstance(value, dict | list) and key not in ("status", "code"):
                continue
            problem = mismatch(value, actual[key], f"{where}.{key}", keys_only=keys_only)
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{where}: expected a list, got {json.dumps(actual)[:120]}"
        if keys_only:
            pairs = zip(expected, actual, strict=False) if all(isinstance(e, dict) for e in expected) else []
            for i, (e, a) in enumerate(pairs):
                problem = mismatch(e, a, f"{where}[{i}]", keys_only=True)
                if problem:
                    return problem
            return None
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} items, got {len(actual)}: {json.dumps(actual)[:200]}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = mismatch(e, a, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, str) and PLACEHOLDER.search(expected):
        parts = re.split(f"({PLACEHOLDER.pattern})", expected)
        pattern = "".join(".*?" if PLACEHOLDER.fullmatch(part) else re.escape(part) for part in parts)
        if isinstance(actual, str) and re.fullmatch(pattern, actual, re.S):
            return None
        return f"{where}: {actual!r} does not match {expected!r}"
    numbers = isinstance(expected, int | float) and isinstance(actual, int | float)
    if type(expected) is not type(actual) and not numbers:
        return f"{where}: expected {expected!r}, got {actual!r}"
    if expected != actual:
        return f"{where}: expected {expected!r}, got {actual!r}"
    return None


def text_mismatch(expected: str, actual: str) -> str | None:
    """Compare console output: a sequence of JSON values when the expected text is one, else lines (placeholders
    allowed in both)."""
    try:
        wanted = json_values(expected)
    except ValueError:
        wanted = None
    if wanted is not None:
        try:
            got = json_values(actual)
        except ValueError:
            return f"expected JSON output, got:\n{actual}"
        return mismatch(wanted, got)
    exp_lines = [line.rstrip() for line in expected.strip().splitlines()]
    act_lines = [line.rstrip() for line in actual.strip().splitlines()]
    if len(exp_lines) != len(act_lines):
        return f"expected {len(exp_lines)} lines, got {len(act_lines)}:\n{actual}"
    for exp, act in zip(exp_lines, act_lines, strict=True):
        problem = mismatch(exp, act)
        if problem:
            return f"line differs: {problem}"
    return None


def json_values(text: str) -> list[Any]:
    """Every JSON value of ``text``, one after another (``compozy-nb exec`` prints one per request)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            if not values:
                raise ValueError("no JSON value")
            return values
        value, index = decoder.raw_decode(text, index)
        values.append(value)


# ---------------------------------------------------------------------------- executing a page
def _mapping(block: Block) -> dict[str, Any]:
    data = yaml.safe_load(block.text)
    if not isinstance(data, dict):
        raise AssertionError(f"{block.where}: expected a YAML mapping")
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _scratch(session: Project) -> Project:
    """A throwaway project holding the session's memory resources (for validating workflows)."""
    scratch = Project(settings=session.settings)
    scratch.resources = dict(session.resources)
    scratch.sources = dict(session.sources)
    return scratch


def _fragment_document(kind: str, data: Any) -> tuple[str, str]:
    """The template document a fragment is validated in: (document kind, YAML text)."""
    if kind == "memory":
        return "memory", _dump({"resource": "memory", "id": "doc_fragment", "type": "buffer", **data})
    if kind == "memory-task":
        task = {"id": "doc_fragment", "type": "memory", "memory_ref": "conversation_memory", **data}
        return "workflow", _dump({"name": "doc-fragment", "tasks": [task]})
    if kind == "task":
        tasks = data if isinstance(data, list) else [data]
        tasks = [{"id": f"doc_fragment_{i}", **t} for i, t in enumerate(tasks)]
        return "workflow", _dump({"name": "doc-fragment", "tasks": tasks})
    if kind == "workflow":
        read = {"id": "doc_fragment", "type": "memory", "operation": "read", "memory_ref": "conversation_memory"}
        return "workflow", _dump({"name": "doc-fragment", "tasks": [read], **data})
    if kind == "project":
        return "project", _dump(data)
    raise AssertionError(f"unknown fragment kind {kind!r}")


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` for Python 3.10."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


BROKEN_SOURCES = {"memory": "memory/broken.yaml", "workflow": "workflows/broken.yaml"}


def _validate(kind: str, text: str, session: Project, *, register: bool, source: str | None = None) -> None:
    """Validate one complete document with the real loaders (raises CompozyNbError when invalid)."""
    if kind == "project":
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "compozy.yaml").write_text(text, encoding="utf-8")
            load_settings(Path(tmp))
        return
    if kind not in ("memory", "workflow"):
        raise AssertionError(f"unknown document kind {kind!r}")
    target = session if register else _scratch(session)
    ids = target.add_yaml(text, source=source or f"<doc {kind}>", replace=True)
    assert ids, "no document found"
    if kind == "memory":
        assert all(i in target.resources for i in ids), f"not a memory resource: {ids}"
    else:
        assert all(i in target.workflows for i in ids), f"not a workflow: {ids}"


def _input(args: str, after: str) -> dict[str, Any]:
    rest = args[len(after) :].strip() if args.startswith(after) else args.strip()
    return json.loads(rest) if rest else dict(DEFAULT_INPUT)


def _run_cli(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run one ``compozy-nb`` command line in-process on a fresh embedded backend (as a new process would)."""
    from compozy_nb.cli import main

    argv = shlex.split(command)
    assert argv[0] == "compozy-nb", f"only compozy-nb commands run in docs: {command}"
    reset_embedded()
    capsys.readouterr()
    with _cwd(REPO):
        try:
            main(argv[1:])
        except SystemExit:  # argparse errors
            pass
    out, err = capsys.readouterr()
    err = "\n".join(line for line in err.splitlines() if not line.startswith(EMBEDDED_NOTICE))
    return out + err


def _console_steps(block: Block) -> list[tuple[str, str]]:
    """``$ command`` lines (with ``\\`` continuations) and the expected output below each."""
    steps: list[tuple[str, list[str]]] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            steps.append((command, []))
        elif steps:
            steps[-1][1].append(line)
        i += 1
    return [(cmd, "\n".join(out)) for cmd, out in steps]


class Page:
    """Runs the blocks of one markdown page in order, collecting every problem."""

    def __init__(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.path = path
        self.capsys = capsys
        self.problems: list[str] = []
        self.session = Project.load(EXAMPLE, redis_url=f"embedded://docs-{uuid.uuid4().hex}")
        self.last: tuple[Block, Any, CompozyNbError | None] | None = None
        self.shell: Any = None

    def notebook_cell(self, block: Block) -> None:
        """Run a notebook cell in IPython (the page's magic project starts empty on its own embedded backend)."""
        if self.shell is None:
            from IPython.core.interactiveshell import InteractiveShell

            self.shell = InteractiveShell.instance()
            self.shell.run_line_magic("load_ext", "compozy_nb")
            magics = self.shell.magics_manager.registry["Compozy"]
            magics._project = Project(redis_url=f"embedded://docs-nb-{uuid.uuid4().hex}")
        with _cwd(REPO):
            result = self.shell.run_cell(block.text, store_history=False)
        if not result.success:
            self.fail(block, f"the cell raised {result.error_in_exec or result.error_before_exec!r}")

    def fail(self, block: Block, message: str) -> None:
        self.problems.append(f"{block.where}: [{block.marker}] {message}")

    def run(self) -> list[str]:
        for block in fenced_blocks(self.path):
            if block.lang in ("yaml", "yml") and block.marker is None:
                self.fail(block, "a YAML block needs a <!-- doc: ... --> marker on the line before it")
                continue
            if block.marker is None:
                continue
            if block.kind not in KINDS:
                self.fail(block, f"unknown marker kind {block.kind!r} (known: {sorted(KINDS)})")
                continue
            try:
                self.check(block)
            except CompozyNbError as exc:
                self.fail(block, f"{exc.code}: {exc}")
            except (AssertionError, ValueError, yaml.YAMLError) as exc:
                self.fail(block, f"{type(exc).__name__}: {exc}")
        return self.problems

    def check(self, block: Block) -> None:
        kind, args = block.kind, block.args
        if kind in ("output", "error"):
            self.compare(block)
            return
        self.last = None
        if kind in ("memory", "workflow", "project"):
            _validate(kind, block.text, self.session, register=True)
        elif kind == "fragment":
            doc_kind, text = _fragment_document(args.split()[0], yaml.safe_load(block.text))
            _validate(doc_kind, text, self.session, register=False)
        elif kind == "invalid":
            what = args.split()[0]
            if what == "memory-task":
                what, text = _fragment_document("memory-task", _mapping(block))
            else:
                text = block.text
            try:
                _validate(what, text, self.session, register=False, source=BROKEN_SOURCES.get(what))
            except CompozyNbError as exc:
                self.last = (block, None, exc)
            else:
                self.fail(block, "this document is marked invalid but was accepted")
        elif kind == "run":
            assert args.startswith("memory-task"), "only 'run memory-task' exists"
            task = _mapping(block)
            doc_kind, text = _fragment_document("memory-task", task)
            _validate(doc_kind, text, self.session, register=False)
            self.execute(block, {"type": "memory", **task}, _input(args, "memory-task"))
        elif kind == "request":
            body = json.loads(block.text)
            self.execute(block, body, None)
        elif kind == "cli":
            for command, expected in _console_steps(block):
                actual = _run_cli(command, self.capsys)
                if expected.strip():
                    problem = text_mismatch(expected, actual)
                else:  # no output shown: the command must at least succeed
                    failed = '"status": "failed"' in actual or actual.lstrip().startswith("error [")
                    problem = "the command failed" if failed else None
                if problem:
                    self.fail(block, f"$ {command}\n{problem}\n--- actual output ---\n{actual}")
        elif kind == "notebook":
            self.notebook_cell(block)
        elif kind == "python":
            reset_embedded()
            with _cwd(REPO):
                try:
                    exec(compile(block.text, block.where, "exec"), {"__name__": "__doc__"})
                except Exception:
                    self.fail(block, traceback.format_exc(limit=-3))

    def execute(self, block: Block, body: dict[str, Any], data: dict[str, Any] | None) -> None:
        try:
            result: Any = self.session.execute(body, data)
            if data is not None:  # a task fragment: its output map is what the page shows
                result = result["output"]
            self.last = (block, result, None)
        except CompozyNbError as exc:
            self.last = (block, None, exc)

    def compare(self, block: Block) -> None:
        if self.last is None:
            self.fail(block, "no run/request/invalid block right before this one")
            return
        source, result, error = self.last
        self.last = None
        if block.lang == "json":
            expected: Any = json.loads(block.text)
        else:
            expected = block.text.strip()
        if block.kind == "output":
            if error is not None:
                self.fail(block, f"{source.where} raised {error.code}: {error}")
                return
            problem = mismatch(expected, result)
            shown = json.dumps(result, indent=2, ensure_ascii=False)
        else:
            if error is None:
                self.fail(block, f"{source.where} did not fail; it gave {json.dumps(result)[:300]}")
                return
            actual = error.to_dict() if isinstance(expected, dict) else str(error)
            problem = mismatch(expected, actual)
            shown = json.dumps(actual, indent=2, ensure_ascii=False) if isinstance(actual, dict) else actual
        if problem:
            self.fail(block, f"{problem}\n--- actual ---\n{shown}")


@pytest.fixture(autouse=True)
def _no_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docs run on the embedded backend, whatever the environment says."""
    monkeypatch.delenv("COMPOZY_REDIS_URL", raising=False)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_page_blocks(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every marked block of the page validates, runs and gives the documented output."""
    problems = Page(path, capsys).run()
    assert not problems, "\n\n".join(problems)


def test_every_checked_page_has_marked_blocks() -> None:
    """The convention is in use (a typo in the marker syntax would silently check nothing)."""
    for name in ("features/memory-tasks.md", "migration/memory-tasks-migration.md", "compatibility.md"):
        blocks = fenced_blocks(DOCS / name)
        assert any(b.marker for b in blocks), f"docs/{name} has no <!-- doc: --> marker"
    kinds = {b.kind for path in markdown_files() for b in fenced_blocks(path) if b.marker}
    assert {"memory", "workflow", "project", "fragment", "run", "request", "output", "error", "cli"} <= kinds


def test_markers_are_on_the_line_before_a_fence() -> None:
    """A marker that is not directly above a fenced block checks nothing: it is an error."""
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if MARKER.match(line):
                following = lines[number] if number < len(lines) else ""
                assert FENCE.match(following), f"{path.relative_to(REPO)}:{number}: marker not followed by a fence"


# ---------------------------------------------------------------------------- the HTTP API doc
def _http_requests(path: Path) -> Iterator[tuple[Block, str, str, Any, Any]]:
    """(block, method, path, body, documented response) for every execute request of the API doc."""
    blocks = fenced_blocks(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, block in enumerate(blocks):
        if block.lang != "http":
            continue
        first = block.text.strip().splitlines()[0]
        match = re.match(r"(POST)\s+(/workflows/\S+/execute)\b", first)
        if not match:
            continue
        brace = block.text.find("{")
        body = json.loads(block.text[brace:]) if brace >= 0 else None
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        end = block.line + block.text.count("\n") + 1  # the closing fence
        between = lines[end : following.line - 1] if following else ["x"]
        documented = None
        if following is not None and following.lang == "json" and not any(s.strip() for s in between):
            documented = json.loads(following.text)
        yield block, match.group(1), match.group(2), body, documented


def test_api_doc_execute_requests_run() -> None:
    """Each execute request of docs/api/memory-endpoints.md runs through the real app (in document order, on a
    fresh embedded backend) and answers with the documented status, error code and keys."""
    assert API_DOC.exists(), "docs/api/memory-endpoints.md is missing"
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    requests = list(_http_requests(API_DOC))
    assert requests, "the API doc shows no execute request"
    project = Project.load(REPO, redis_url=f"embedded://api-doc-{uuid.uuid4().hex}")
    problems = []
    with TestClient(create_app(project, api_key=""), base_url="http://localhost") as client:
        for block, method, url, body, documented in requests:
            response = client.request(method, url, json=body) if body is not None else client.request(method, url)
            actual = response.json()
            if documented is None:
                if response.status_code >= 500:
                    problems.append(f"{block.where}: {method} {url} -> {response.status_code} {actual}")
                continue
            problem = mismatch(documented, actual, keys_only=True)
            if isinstance(documented.get("status"), int) and documented["status"] != response.status_code:
                problem = f"HTTP {response.status_code}, documented {documented['status']}"
            if problem:
                problems.append(f"{block.where}: {method} {url}: {problem}\n{json.dumps(actual)[:600]}")
    assert not problems, "\n\n".join(problems)


# ---------------------------------------------------------------------------- links and anchors
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REF_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"""<a\b[^>]*\b(?:name|id)\s*=\s*["']([^"']+)["']""", re.I)


def strip_code(markdown: str, *, inline: bool = True) -> str:
    """The markdown without fenced blocks and (with ``inline``) code spans: links and headings there are not."""
    out, fence = [], None
    for line in markdown.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(2)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line) if inline else line)
    return "\n".join(out)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = "".join(ch for ch in text.lower() if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


def anchors_of_markdown(markdown: str) -> set[str]:
    """Every anchor a markdown text defines (headings, with GitHub's -1, -2 suffixes for repeats, and <a id>)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    plain = strip_code(markdown, inline=False)
    lines = plain.splitlines()
    for index, line in enumerate(lines):
        match = HEADING.match(line)
        text = match.group(2) if match else None
        underline = lines[index + 1] if index + 1 < len(lines) else ""
        if text is None and line.strip() and re.fullmatch(r"\s{0,3}(=+|-+)\s*", underline):
            text = line.strip()  # a setext heading
        if text is not None:
            slug = github_slug(text)
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(HTML_ID.findall(line))
    return found


def markdown_of(path: Path) -> str:
    """The markdown of a file: the file itself, or the markdown cells of a notebook."""
    if path.suffix == ".ipynb":
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = [c for c in notebook.get("cells", []) if c.get("cell_type") == "markdown"]
        return "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return path.read_text(encoding="utf-8")


def link_sources() -> list[Path]:
    """Files whose links are checked."""
    files = [*DOCS.rglob("*.md"), REPO / "README.md", *REPO.joinpath("examples").rglob("README.md")]
    files += [*REPO.joinpath("notebooks").glob("*.ipynb"), REPO / "notebooks" / "README.md"]
    return sorted(p for p in set(files) if p.exists())


def links_of(markdown: str) -> list[str]:
    plain = strip_code(markdown)
    return INLINE_LINK.findall(plain) + REF_DEFINITION.findall(plain) + HTML_LINK.findall(plain)


@pytest.mark.parametrize("path", link_sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    """Every relative link points at an existing file or directory, and every #anchor at a heading in it."""
    problems = []
    for target in links_of(markdown_of(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        raw_path, _, anchor = target.partition("#")
        file = (path.parent / urllib.parse.unquote(raw_path)).resolve() if raw_path else path
        if not file.exists():
            problems.append(f"{target}: {file.relative_to(REPO) if file.is_relative_to(REPO) else file} does not exist")
            continue
        if not file.is_relative_to(REPO):
            problems.append(f"{target}: points outside the repository")
            continue
        if anchor:
            if file.is_dir() or file.suffix not in (".md", ".ipynb"):
                problems.append(f"{target}: an anchor into a file that has no headings")
                continue
            anchors = anchors_of_markdown(markdown_of(file))
            if urllib.parse.unquote(anchor) not in anchors:
                near = sorted(a for a in anchors if a[:4] == anchor[:4])[:5]
                problems.append(f"{target}: no heading with anchor #{anchor} in {file.name} (similar: {near})")
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_slugs_follow_github_rules() -> None:
    """The slug function on the cases the docs rely on."""
    assert github_slug("Differences from Compozy's REST API") == "differences-from-compozys-rest-api"
    assert github_slug("`POST /workflows/{workflow_id}/execute`") == "post-workflowsworkflow_idexecute"
    assert github_slug("1. Provision Redis") == "1-provision-redis"
    assert github_slug("Cluster: hash tags — `{key}`") == "cluster-hash-tags--key"
    assert anchors_of_markdown("# A\n## A\n```\n# not\n```\n## A\n") == {"a", "a-1", "a-2"}


# ---------------------------------------------------------------------------- the example project
def test_example_project_validates() -> None:
    project = Project.load(EXAMPLE, redis_url="embedded://docs-example")
    assert set(project.resources) == {"conversation_memory"}
    assert set(project.workflows) == {"chatbot-workflow"}
    assert isinstance(project.resources["conversation_memory"], MemoryResource)
    assert isinstance(load_settings(EXAMPLE)[0], ProjectSettings)


def test_compozy_nb_run_on_the_example_project() -> None:
    """The README's command, as a real process: the chatbot answers and its memory is redacted."""
    data = {"user_id": "u1", "session_id": "s1", "user_message": "Hi, I'm Ann (ann@example.com)"}
    env = {k: v for k, v in os.environ.items() if k not in ("COMPOZY_REDIS_URL", "OPENAI_API_KEY")}
    proc = subprocess.run(
        [str(CLI), "run", "chatbot-workflow", "--project", "examples/memory-workflow", "--input", json.dumps(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads(proc.stdout)
    assert run["status"] == "completed"
    assert run["output"] == {"reply": "You said: Hi, I'm Ann (ann@example.com) (turn 1)", "history_count": 0}
    saved = run["tasks"]["save_interaction"]["output"]
    assert (saved["appended"], saved["total_count"], saved["key"]) == (2, 2, "conv:u1:s1")


# ---------------------------------------------------------------------------- README, as pasted into a notebook
def readme_cells() -> list[Block]:
    """README's notebook code, in order: the ``python`` blocks and the ``%%compozy`` YAML cells. (Its ``bash``
    blocks are the install and test commands: .ci/run runs the test command on a clean machine, test_cli runs
    ``compozy-nb demo``, and the browser test starts ``jupyter lab`` like the notebook command.)"""
    blocks = fenced_blocks(REPO / "README.md")
    return [b for b in blocks if b.lang == "python" or (b.lang == "yaml" and b.text.startswith("%%compozy"))]


def test_readme_code_runs_in_a_real_ipython_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every README code block runs as pasted into a notebook: one InteractiveShell with the extension loaded,
    from the repository root, on a fresh embedded backend; no cell may raise."""
    from IPython.core.interactiveshell import InteractiveShell

    cells = readme_cells()
    assert any("%load_ext compozy_nb" in c.text for c in cells)
    monkeypatch.setenv("COMPOZY_REDIS_URL", f"embedded://readme-{uuid.uuid4().hex}")
    monkeypatch.chdir(REPO)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "compozy_nb")
    magics = shell.magics_manager.registry["Compozy"]
    saved, magics._project = magics._project, None
    try:
        for block in cells:
            result = cast(Any, shell).run_cell(block.text, store_history=False)  # unannotated in IPython
            assert result.success, f"{block.where}: {result.error_in_exec or result.error_before_exec!r}"
        frame = shell.user_ns["frame"]
        assert frame["content"].tolist() == ["I am [REDACTED]"]
        assert str(frame["ts"].dt.tz) == "UTC"
    finally:
        magics._project = saved


def test_notebook_sanitizer_hides_how_pandas_shows_write_times() -> None:
    """regression (CI, notebook 02): pandas drops ``.000`` from a datetime column when every value is a whole second,
    so the ts header of a transcript frame moved 4 characters in about one run in a thousand"""
    from nbval.plugin import get_sanitize_patterns  # type: ignore[import-untyped]  # nbval ships no type information

    from compozy_nb.memory.frames import messages_frame

    patterns = get_sanitize_patterns((REPO / "notebooks" / "sanitize.cfg").read_text(encoding="utf-8"))

    def shown(stamp: str) -> str:
        messages = [{"role": "user", "content": f"m{i}", "tokens": 5, "id": f"m{i}", "ts": stamp} for i in range(2)]
        text = repr(messages_frame(messages, 4))
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    assert "TIMESTAMP" in shown("2026-12-04T17:56:00.000Z")
    assert shown("2026-12-04T17:56:00.000Z") == shown("2026-12-04T17:56:00.621Z")
