"""Tests for the Go-style sandboxed templates in :mod:`compozy_nb.templating`."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compozy_nb.errors import TemplateError
from compozy_nb.templating import (
    evaluate,
    has_template,
    referenced_paths,
    render,
    render_value,
    validate,
)

CONTEXT: dict[str, Any] = {
    "user_id": "u-42",
    "session_id": "s-7",
    "name": "  Ada Lovelace ",
    "flag": True,
    "off": False,
    "nothing": None,
    "ratio": 0.5,
    "project.id": "proj-1",
    "workflow": {"input": {"user_id": "alice", "some key": "spaced", "0": "zero-key"}},
    "tasks": {"read_history": {"output": {"count": 3, "items": ["a", "b"]}}},
    "messages": [
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": "hi"},
    ],
    "items": "the key named items",
}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # seed forms
        ("conv:{{.user_id}}:{{.session_id}}", "conv:u-42:s-7"),
        ("user:{{.workflow.input.user_id}}", "user:alice"),
        ("{{ .tasks.read_history.output.count }}", "3"),
        ("{{.messages.0.content}}", "héllo"),
        ("{{ .messages.1.role }}", "assistant"),
        # whitespace inside the braces is optional
        ("{{.user_id}}|{{ .user_id }}|{{   .user_id\t}}", "u-42|u-42|u-42"),
        # a digit segment on a map is a key
        ("{{ .workflow.input.0 }}", "zero-key"),
        # a key named like a dict method is a key, not the method
        ("{{ .items }}", "the key named items"),
        # filters
        ("{{ .user_id | upper }}", "U-42"),
        ("{{ .name | lower }}", "  ada lovelace "),
        ("{{ .name | trim }}", "Ada Lovelace"),
        ("{{.name|trim|upper}}", "ADA LOVELACE"),
        ("{{ .messages | length }}", "2"),
        ("{{ .name | length }}", "15"),
        ("{{ .workflow | length }}", "1"),
        ("{{ .user_id | json }}", '"u-42"'),
        ("{{ .tasks.read_history.output | json }}", '{"count":3,"items":["a","b"]}'),
        ("{{ .flag | upper }}", "TRUE"),
        # index form
        ('{{index . "project.id"}}', "proj-1"),
        ('{{ index .workflow.input "some key" }}', "spaced"),
        ('{{ index . "workflow" "input" "user_id" }}', "alice"),
        ('{{ index .messages 1 "content" }}', "hi"),
        ("{{ index .messages `0` `content` }}", "héllo"),
        ('{{ index . "project.id" | upper }}', "PROJ-1"),
        # value formatting
        ("{{ .flag }}/{{ .off }}", "true/false"),
        ("[{{ .nothing }}]", "[]"),
        ("{{ .ratio }}", "0.5"),
        ("{{ .messages.0 }}", '{"role":"user","content":"héllo"}'),
        ("{{ .tasks.read_history.output.items }}", '["a","b"]'),
        # Go trim markers
        ("a  {{- .user_id -}}  b", "au-42b"),
        ("a {{ .user_id -}}\n b", "a u-42b"),
    ],
)
def test_render(template: str, expected: str) -> None:
    assert render(template, CONTEXT) == expected


def test_render_whole_context() -> None:
    ctx = {"a": 1, "b": [True, None]}
    assert render("{{.}}", ctx) == '{"a":1,"b":[true,null]}'
    assert evaluate("{{ . }}", ctx) == ctx


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain text",
        "{% raw %}",
        "{% for x in y %}{% endfor %}",
        "{# a jinja comment #}",
        "{x} {y: 1} }} {",
        '{"json": {"nested": 1}}',
        "{%- if true -%}yes{%- endif -%}",
    ],
)
def test_text_without_double_braces_is_literal(text: str) -> None:
    assert not has_template(text)
    assert render(text, {}) == text
    assert evaluate(text, {}) == text
    validate(text)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% raw %}{{ .user_id }}{% endraw %}", "{% raw %}u-42{% endraw %}"),
        ("{# {{ .user_id }} #}", "{# u-42 #}"),
        ("{x}{{ .user_id }}{y}", "{x}u-42{y}"),
        ("{% for x in y %}{{ .user_id }}{% endfor %}", "{% for x in y %}u-42{% endfor %}"),
        ("}} {{ .user_id }} }}", "}} u-42 }}"),
        ('{"id": "{{ .user_id }}"}', '{"id": "u-42"}'),
    ],
)
def test_jinja_syntax_outside_blocks_is_literal(template: str, expected: str) -> None:
    assert render(template, CONTEXT) == expected


def test_formatter_formats_non_strings() -> None:
    def transcript(value: Any) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in value)

    out = render("History:\n{{ .messages }}\nUser: {{ .user_id }}", CONTEXT, formatter=transcript)
    assert out == "History:\nuser: héllo\nassistant: hi\nUser: u-42"


# --------------------------------------------------------------------------------------------------
# evaluate: keeping types
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ .tasks.read_history.output.count }}", 3),
        ("  {{ .messages }}\n", CONTEXT["messages"]),
        ("{{ .flag }}", True),
        ("{{ .nothing }}", None),
        ("{{ .ratio }}", 0.5),
        ("{{ .messages | length }}", 2),
        ("{{ .tasks.read_history.output | json }}", '{"count":3,"items":["a","b"]}'),
        ("{{- .tasks.read_history.output.items -}}", ["a", "b"]),
        # more than one block, or text around it: a string
        ("n={{ .tasks.read_history.output.count }}", "n=3"),
        ("{{ .flag }}{{ .off }}", "truefalse"),
        ("no template", "no template"),
    ],
)
def test_evaluate_keeps_types(template: str, expected: Any) -> None:
    result = evaluate(template, CONTEXT)
    assert result == expected
    assert type(result) is type(expected)


# --------------------------------------------------------------------------------------------------
# Sandbox and syntax rejections
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{{.a.__class__}}", "'__class__' is not allowed"),
        ("{{ ._private }}", "must not start with '_'"),
        ("{{ .x() }}", "function calls"),
        ("{{ .a.b.items() }}", "function calls"),
        ("{{ 1+1 }}", "operators and arithmetic"),
        ("{{ .a + .b }}", "operators and arithmetic"),
        ("{{ .a * 2 }}", "operators and arithmetic"),
        ("{{ .a | attr('x') }}", "filter 'attr' is not allowed"),
        ("{{ .a.b | safe }}", "filter 'safe' is not allowed"),
        ("{{ .a | json(1) }}", "filter arguments are not allowed"),
        ("{{ .a | }}", "needs a filter name"),
        ("{{ | upper }}", "needs a value before it"),
        ("{{ range . }}", "'range'"),
        ("{{ if .a }}x{{ end }}", "'if'"),
        ("{{ upper .a }}", "'upper' is not allowed"),
        ("{{ x }}", "'x' is not allowed"),
        ("{{ 'str' }}", "string literals"),
        ('{{ "str" }}', "literal values"),
        ("{{ 42 }}", "literal values"),
        ("{{ $x }}", "variables"),
        ("{{ .a.b[0] }}", "brackets"),
        ("{{ .a .b }}", "only one path"),
        ("{{ }}", "empty expression"),
        ("{{/* comment */}}", "not allowed"),
        ("{{ index . }}", "'index' needs at least one key"),
        ("{{ index }}", "'index' needs a path"),
        ("{{ index .a 1.5 }}", "invalid index"),
        ("{{ {{ .a }} }}", "nested braces"),
        ("hello {{ .user_id ", "unclosed '{{'"),
        ('{{ index . "}} }}', "unclosed '{{'"),
        ("{% for x in y %}{% endfor %}{{ range . }}", "'range'"),
        ("{{ .a.__globals__ }}", "'__globals__' is not allowed"),
        ("{{ .__class__.__mro__ }}", "'__class__' is not allowed"),
    ],
)
def test_rejected_templates(template: str, fragment: str) -> None:
    for check in (validate, lambda t: render(t, CONTEXT), lambda t: evaluate(t, CONTEXT)):
        with pytest.raises(TemplateError) as info:
            check(template)
        assert fragment in str(info.value)
        assert repr(template) in str(info.value)  # the template is quoted
        assert info.value.code == "TEMPLATE_ERROR"


def test_long_template_is_quoted_around_the_problem() -> None:
    template = "x" * 500 + "{{ .a() }}" + "y" * 500
    with pytest.raises(TemplateError) as info:
        validate(template)
    message = str(info.value)
    assert "{{ .a() }}" in message
    assert len(message) < 600


def test_index_with_private_looking_key_is_a_plain_lookup() -> None:
    assert render('{{ index . "_id" }}', {"_id": 7}) == "7"
    with pytest.raises(TemplateError, match="missing variable"):
        render('{{ index . "__class__" }}', {})


def test_index_keys_with_special_characters() -> None:
    key = "a\"b\\c}}\n é😀 `x' {% %}"
    ctx = {"weird": {key: "found"}}
    assert render("{{ index .weird " + json.dumps(key) + " }}", ctx) == "found"
    assert render("{{ index .weird " + json.dumps(key, ensure_ascii=False) + " }}", ctx) == "found"
    assert referenced_paths("{{ index .weird " + json.dumps(key) + " }}") == [("weird", key)]


def test_no_method_or_attribute_access() -> None:
    # dict methods, str methods and list attributes are never reachable
    for template in ("{{ .d.items }}", "{{ .d.keys }}", "{{ .s.upper }}", "{{ .l.append }}"):
        with pytest.raises(TemplateError, match="missing variable"):
            render(template, {"d": {}, "s": "x", "l": []})


# --------------------------------------------------------------------------------------------------
# Missing variables
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "context", "message"),
    [
        (
            "user:{{.workflow.input.user_id}}",
            {"workflow": {"input": {}}},
            "missing variable '.workflow.input.user_id' in template 'user:{{.workflow.input.user_id}}': "
            "'.workflow.input' has no key 'user_id' (it is empty)",
        ),
        (
            "user:{{.workflow.input.user_id}}",
            {"workflow": {"input": {"name": "x", "id": 1}}},
            "missing variable '.workflow.input.user_id' in template 'user:{{.workflow.input.user_id}}': "
            "'.workflow.input' has no key 'user_id' (available: 'name', 'id')",
        ),
        (
            "conv:{{.user_id}}:{{.session_id}}",
            {"user_id": "u"},
            "missing variable '.session_id' in template 'conv:{{.user_id}}:{{.session_id}}': "
            "'.' has no key 'session_id' (available: 'user_id')",
        ),
        (
            "{{ .workflow.input.user_id }}",
            {},
            "'.' has no key 'workflow' (it is empty)",
        ),
        (
            "{{ .a.b }}",
            {"a": {f"k{i}": i for i in range(11)}},
            "'.a' has no key 'b' (11 keys)",
        ),
        ("{{ .messages.2.content }}", {"messages": [1, 2]}, "'.messages' has 2 item(s), no index 2"),
        ("{{ .messages.first }}", {"messages": []}, "'.messages' is a list and 'first' is not an index"),
        ("{{ .a.b }}", {"a": None}, "'.a' is null"),
        ("{{ .a.b }}", {"a": "text"}, "'.a' is a string"),
        ("{{ .a.b | upper }}", {"a": {}}, "missing variable '.a.b'"),
        ('{{ index .a "x y" }}', {"a": {}}, "missing variable '.a[\"x y\"]'"),
        ("{{ index .l 3 }}", {"l": [0]}, "'.l' has 1 item(s), no index 3"),
    ],
)
def test_missing_variables(template: str, context: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, context)
    assert message in str(info.value)
    with pytest.raises(TemplateError):
        evaluate(template, context)


def test_none_value_is_not_missing() -> None:
    assert render("{{ .a }}", {"a": None}) == ""
    assert evaluate("{{ .a }}", {"a": None}) is None


def test_filter_type_error() -> None:
    with pytest.raises(TemplateError, match="filter 'length' needs a string, list or map, got int"):
        render("{{ .n | length }}", {"n": 3})


# --------------------------------------------------------------------------------------------------
# render_value
# --------------------------------------------------------------------------------------------------


def test_render_value_nested() -> None:
    value = {
        "role": "user",
        "content": "Hi {{ .user_id }}",
        "meta": {"count": "{{ .tasks.read_history.output.count }}", "n": 5, "tags": ["{{ .flag }}", None]},
        "history": "{{ .messages }}",
        "pair": ("{{ .session_id }}", 1),
    }
    expected = {
        "role": "user",
        "content": "Hi u-42",
        "meta": {"count": 3, "n": 5, "tags": [True, None]},
        "history": CONTEXT["messages"],
        "pair": ("s-7", 1),
    }
    assert render_value(value, CONTEXT) == expected
    as_text = render_value(value, CONTEXT, keep_types=False)
    assert as_text["meta"] == {"count": "3", "n": 5, "tags": ["true", None]}
    assert as_text["history"] == json.dumps(CONTEXT["messages"], ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    ("value", "where", "path"),
    [
        ({"payload": ["ok", {"content": "{{ .nope }}"}]}, "", "payload[1].content"),
        (["ok", {"content": "{{ .nope }}"}], "payload", "payload[1].content"),
        ({"a": {"b": ["{{ .nope }}"]}}, "", "a.b[0]"),
        ("{{ .nope }}", "key", "key"),
    ],
)
def test_render_value_error_names_the_leaf(value: Any, where: str, path: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_value(value, CONTEXT, where=where)
    assert str(info.value).startswith(f"{path}: missing variable '.nope'")
    assert info.value.context["field"] == path


def test_render_value_top_level_string_without_where() -> None:
    with pytest.raises(TemplateError) as info:
        render_value("{{ .nope }}", CONTEXT)
    assert str(info.value).startswith("missing variable '.nope'")


# --------------------------------------------------------------------------------------------------
# Static helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "paths"),
    [
        ("user:{{.workflow.input.user_id}}", [("workflow", "input", "user_id")]),
        ("conv:{{.user_id}}:{{.session_id}}:{{ .user_id }}", [("user_id",), ("session_id",)]),
        ('{{ index . "project.id" }}', [("project.id",)]),
        ("{{ index .messages 0 `content` | upper }}", [("messages", "0", "content")]),
        ("{{ .messages.0.content }}", [("messages", "0", "content")]),
        ("{{ . }}", []),
        ("no template {x}", []),
    ],
)
def test_referenced_paths(template: str, paths: list[tuple[str, ...]]) -> None:
    assert referenced_paths(template) == paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{{.a}}", True), ("x {{ y", True), ("{x}", False), ("{ {", False), ("", False)],
)
def test_has_template(text: str, expected: bool) -> None:
    assert has_template(text) is expected


def test_validate_accepts_valid_templates_without_context() -> None:
    validate("conv:{{.user_id}}:{{.session_id}}")
    validate('{{ index .workflow.input "some key" | json }}')
    validate("{{ . }}")


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------

_IDENTIFIERS = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,15}", fullmatch=True)


@given(st.dictionaries(_IDENTIFIERS, st.text(), min_size=1, max_size=8))
def test_property_path_renders_the_value(context: dict[str, str]) -> None:
    for key, value in context.items():
        assert render("{{." + key + "}}", context) == value
        assert render("{{ ." + key + " }}", context) == value
        assert evaluate("{{." + key + "}}", context) == value
        assert render("<{{." + key + "}}>", context) == f"<{value}>"


@given(st.text().filter(lambda text: "{{" not in text))
def test_property_text_without_braces_renders_to_itself(text: str) -> None:
    assert render(text, {}) == text
    assert evaluate(text, {"a": 1}) == text
    assert render_value(text, {}) == text


@given(
    st.text(alphabet=string.printable + "{}%#é", max_size=40).filter(
        lambda text: "{{" not in text and not text.endswith("{")
    )
)
def test_property_literals_around_a_block_are_kept(text: str) -> None:
    assert render(text + "{{ .v }}" + text, {"v": "X"}) == f"{text}X{text}"


# ---------------------------------------------------------------------------- bounds and keys (issue 10)
def test_oversize_template_is_refused_before_parsing() -> None:
    from compozy_nb.templating import MAX_TEMPLATE_CHARS

    with pytest.raises(TemplateError, match=f"more than {MAX_TEMPLATE_CHARS}"):
        render("{{.u}}" * 30_000, {"u": "x"})  # 180 KB: 6.5 s of CPU before this bound


def test_number_of_blocks_is_bounded() -> None:
    from compozy_nb.templating import MAX_EXPRESSIONS

    assert render("{{.u}}" * MAX_EXPRESSIONS, {"u": "x"}) == "x" * MAX_EXPRESSIONS
    with pytest.raises(TemplateError, match=f"more than {MAX_EXPRESSIONS}"):
        render("{{.u}}" * (MAX_EXPRESSIONS + 1), {"u": "x"})


def test_compiled_programs_are_chunked_and_the_cache_is_small() -> None:
    """Compile cost is linear: expressions are compiled 32 at a time, never as one huge Jinja tuple."""
    from compozy_nb.templating import _compile, _compile_cached

    assert len(_compile("{{.u}}-" * 100).programs) == 4
    assert _compile_cached.cache_info().maxsize == 256


@pytest.mark.parametrize(
    ("value", "why"),
    [(None, "null"), ("", "empty"), ("  ", "blank"), (float("nan"), "not a finite number"), (float("inf"), "finite")],
)
def test_render_key_refuses_unusable_variables(value: Any, why: str) -> None:
    """chat:{{.user}} with user=None, "" or NaN gave chat: / chat:nan - several users in one key."""
    from compozy_nb.templating import render_key

    with pytest.raises(TemplateError, match=why) as caught:
        render_key("chat:{{.user}}", {"user": value})
    assert caught.value.context["variable"] == ".user"
    assert "'.user'" in str(caught.value)


def test_render_key_renders_numbers_as_text() -> None:
    from compozy_nb.templating import render_key

    assert render_key("chat:{{.user}}:{{.n}}", {"user": 7, "n": 1.5}) == "chat:7:1.5"
    with pytest.raises(TemplateError, match="missing variable"):
        render_key("chat:{{.user}}", {})


@pytest.mark.parametrize("value", [None, "", float("nan")])
def test_project_memory_refuses_unusable_key_variables(value: Any) -> None:
    from pathlib import Path

    from compozy_nb import Project

    project = Project.load(Path(__file__).resolve().parents[2], redis_url="embedded://render-key")
    with pytest.raises(TemplateError, match="user_id"):
        project.memory("conversation_memory", user_id=value, session_id="s1")
    assert project.memory("conversation_memory", user_id=7, session_id="s1").key == "conv:7:s1"
