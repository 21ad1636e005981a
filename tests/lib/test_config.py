"""Memory resource YAML: loading, every field, the validation rules, and errors that start with the
``file:line`` of the offending line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compozy_nb.config.memory import MemoryResource
from compozy_nb.errors import ConfigError
from compozy_nb.project import Project

REPO_ROOT = Path(__file__).resolve().parents[2]
EMAIL_PATTERN = r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,}\b"


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load_resource(text: str) -> MemoryResource:
    project = Project("cfg")
    [rid] = project.add_yaml(_yaml(text))
    return project.resources[rid]


def load_error(tmp_path: Path, text: str, name: str = "bad.yaml") -> tuple[ConfigError, Path]:
    """Write ``text`` to memory/<name> of a project directory, load it, return the error and the file."""
    folder = tmp_path / "memory"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(_yaml(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Project.load(tmp_path)
    return info.value, path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def assert_points_at(error: ConfigError, path: Path, needle: str) -> None:
    assert str(error).startswith(f"{path}:{line_of(path, needle)}:"), str(error)
    assert error.code == "INVALID_CONFIG"


# ------------------------------------------------------------------------------------------- loading
def test_repo_resource_loads_from_project_root() -> None:
    project = Project.load(REPO_ROOT)
    assert project.name == "demo"
    resource = project.resource("conversation_memory")
    assert resource.description == "Conversation history with token management"
    assert resource.key == "conv:{{.user_id}}:{{.session_id}}"
    assert resource.type == "token_based"
    assert (resource.max_tokens, resource.max_messages, resource.token_limit) == (4000, 100, 4000)
    assert resource.persistence.type == "redis" and resource.persistence.ttl_seconds == 24 * 3600
    assert resource.token_provider is not None
    assert (resource.token_provider.provider, resource.token_provider.model) == ("openai", "gpt-3.5-turbo")
    assert resource.privacy_policy is not None
    assert resource.privacy_policy.redact_patterns == [EMAIL_PATTERN]
    assert resource.privacy_policy.non_persistable_message_types == ["system"]
    assert resource.flushing.type == "simple_fifo" and resource.flushing.summarize_threshold == 0.8
    assert project.sources["conversation_memory"].startswith(str(REPO_ROOT / "memory" / "conversation.yaml"))
    # memory_ref lookups are case-insensitive and trimmed, as in Compozy
    assert project.resource(" CONVERSATION_MEMORY ") is resource


def test_every_field_is_accepted() -> None:
    resource = load_resource(
        """
        resource: memory
        id: full_memory
        description: everything set
        version: "1.2.0"
        key: "user:{{.workflow.input.user_id}}"
        type: buffer
        max_tokens: 6000
        max_messages: 50
        max_context_ratio: 0.5
        token_allocation:
          short_term: 0.5
          long_term: 0.2
          system: 0.1
          user_defined:
            notes: 0.2
        flushing:
          type: hybrid_summary
          summarize_threshold: 0.75
          summary_tokens: 200
          summarize_oldest_percent: 0.4
          summarizer:
            provider: openai
            model: gpt-4o-mini
        persistence:
          type: in_memory
          ttl: 1h30m
        token_provider:
          provider: openai
          model: gpt-4
          api_key_env: OPENAI_API_KEY
          api_key: "${OPENAI_API_KEY}"
          endpoint: https://api.openai.com/v1
          settings:
            timeout: 5
          fallback: tiktoken
        privacy_policy:
          redact_patterns:
            - '\\b\\d{3}-\\d{2}-\\d{4}\\b'
          non_persistable_message_types: [system, tool]
          default_redaction_string: "***"
        locking:
          append_ttl: 45s
          clear_ttl: 5s
          flush_ttl: 2m
        max_message_bytes: 2048
        archive_max_messages: 10
        """
    )
    assert resource.id == "full_memory" and resource.version == "1.2.0"
    assert resource.description == "everything set" and resource.type == "buffer"
    assert resource.key == "user:{{.workflow.input.user_id}}"
    assert (resource.max_tokens, resource.max_messages, resource.max_context_ratio) == (6000, 50, 0.5)
    assert resource.token_limit == 4096  # min(6000, 0.5 x gpt-4's 8192)
    assert resource.token_allocation is not None
    assert resource.token_allocation.user_defined == {"notes": 0.2}
    flushing = resource.flushing
    assert (flushing.type, flushing.summarize_threshold, flushing.summary_tokens) == (
        "hybrid_summary",
        0.75,
        200,
    )
    assert flushing.summarize_oldest_percent == 0.4
    assert flushing.summarizer is not None and flushing.summarizer.model == "gpt-4o-mini"
    assert resource.persistence.type == "in_memory" and resource.persistence.ttl_seconds == 5400
    provider = resource.token_provider
    assert provider is not None and provider.model == "gpt-4" and provider.settings == {"timeout": 5}
    assert (provider.api_key_env, provider.endpoint, provider.fallback) == (
        "OPENAI_API_KEY",
        "https://api.openai.com/v1",
        "tiktoken",
    )
    policy = resource.privacy_policy
    assert policy is not None and policy.redact_patterns == [r"\b\d{3}-\d{2}-\d{4}\b"]
    assert policy.non_persistable_message_types == ["system", "tool"]
    assert policy.default_redaction_string == "***"
    assert resource.locking is not None
    assert (resource.locking.append_ttl, resource.locking.clear_ttl, resource.locking.flush_ttl) == (
        "45s",
        "5s",
        "2m",
    )
    assert resource.max_message_bytes == 2048 and resource.archive_max_messages == 10


def test_defaults() -> None:
    resource = load_resource("resource: memory\nid: m\nmax_messages: 3\n")
    assert resource.type == "token_based" and resource.key is None
    assert resource.flushing.type == "simple_fifo" and resource.flushing.summarize_threshold == 0.8
    assert resource.persistence.type == "redis" and resource.persistence.ttl_seconds == 0
    assert resource.token_limit is None and resource.model_name is None
    assert resource.archive_max_messages == 1000 and resource.max_message_bytes == 64 * 1024


@pytest.mark.parametrize("field", ["key", "default_key_template"])
def test_key_template_aliases(field: str) -> None:
    resource = load_resource(f"""
        resource: memory
        id: m
        max_tokens: 10
        {field}: "session:{{{{.workflow.input.session_id}}}}"
        """)
    assert resource.key == "session:{{.workflow.input.session_id}}"


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        ("30s", 30),
        ("24h", 86400),
        ("7d", 604800),
        ('"0"', 0),
        ("0", 0),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("2w", 1209600),
        ("90", 90),
    ],
)
def test_durations(ttl: str, seconds: float) -> None:
    resource = load_resource(f"""
        resource: memory
        id: m
        max_tokens: 10
        persistence:
          ttl: {ttl}
        """)
    assert resource.persistence.ttl_seconds == seconds


@pytest.mark.parametrize("ttl", ["3 days", "-1h", "1x", "h", "''", "1h 30m"])
def test_invalid_durations(tmp_path: Path, ttl: str) -> None:
    error, path = load_error(
        tmp_path,
        f"""
        resource: memory
        id: m
        max_tokens: 10
        persistence:
          type: redis
          ttl: {ttl}
        """,
    )
    assert_points_at(error, path, "ttl:")
    assert "persistence.ttl" in str(error)


# -------------------------------------------------------------------------------------------- rules
def test_limits_rules() -> None:
    assert load_resource("resource: memory\nid: m\nmax_messages: 5\n").max_messages == 5
    assert load_resource("resource: memory\nid: m\nmax_tokens: 5\n").token_limit == 5
    ratio = load_resource("""
        resource: memory
        id: m
        max_context_ratio: 0.25
        token_provider: {model: gpt-4o}
        """)
    assert ratio.token_limit == 32000
    assert load_resource("resource: memory\nid: m\ntype: buffer\n").token_limit is None
    with pytest.raises(ConfigError, match="at least one limit"):
        load_resource("resource: memory\nid: m\ntype: token_based\n")
    with pytest.raises(ConfigError, match="at least one limit"):
        load_resource("resource: memory\nid: m\n")
    with pytest.raises(ConfigError, match="message_count_based memory needs max_messages"):
        load_resource("resource: memory\nid: m\ntype: message_count_based\nmax_tokens: 5\n")


@pytest.mark.parametrize(("threshold", "ok"), [(0, False), (-0.1, False), (1.5, False), (0.01, True), (1, True)])
def test_summarize_threshold_range(threshold: float, ok: bool) -> None:
    text = f"resource: memory\nid: m\nmax_tokens: 10\nflushing:\n  summarize_threshold: {threshold}\n"
    if ok:
        assert load_resource(text).flushing.summarize_threshold == threshold
    else:
        with pytest.raises(ConfigError, match="summarize_threshold"):
            load_resource(text)


def test_hybrid_summary_needs_summary_tokens() -> None:
    with pytest.raises(ConfigError, match="summary_tokens"):
        load_resource("resource: memory\nid: m\nmax_tokens: 10\nflushing:\n  type: hybrid_summary\n")
    with pytest.raises(ConfigError, match="summary_tokens"):
        load_resource("""
            resource: memory
            id: m
            max_tokens: 10
            flushing:
              type: hybrid_summary
              summary_tokens: 0
            """)
    resource = load_resource("""
        resource: memory
        id: m
        max_tokens: 10
        flushing: {type: hybrid_summary, summary_tokens: 5}
        """)
    assert resource.flushing.summary_tokens == 5


@pytest.mark.parametrize(
    ("allocation", "ok"),
    [
        ("{short_term: 0.5, long_term: 0.3, system: 0.2}", True),
        ("{short_term: 0.6, user_defined: {facts: 0.4}}", True),
        ("{short_term: 0.3334, long_term: 0.3333, system: 0.3333}", True),
        ("{short_term: 0.5, long_term: 0.3}", False),
        ("{short_term: 0.7, long_term: 0.5}", False),
        ("{}", False),
    ],
)
def test_token_allocation_sums_to_one(allocation: str, ok: bool) -> None:
    text = f"resource: memory\nid: m\nmax_tokens: 10\ntoken_allocation: {allocation}\n"
    if ok:
        assert load_resource(text).token_allocation is not None
    else:
        with pytest.raises(ConfigError, match=r"must be approximately 1\.0"):
            load_resource(text)


@pytest.mark.parametrize(
    ("provider", "ok"),
    [
        ("", False),
        ("token_provider: {provider: openai}", False),
        ("token_provider: {model: llama-3-70b}", False),
        ("token_provider: {model: gpt-4o-mini}", True),
        ("token_provider: {model: gpt-4-0613}", True),
    ],
)
def test_max_context_ratio_needs_known_model(provider: str, ok: bool) -> None:
    text = f"resource: memory\nid: m\nmax_context_ratio: 0.5\n{provider}\n"
    if ok:
        assert load_resource(text).token_limit is not None
    else:
        with pytest.raises(ConfigError, match=r"max_context_ratio needs token_provider\.model"):
            load_resource(text)


@pytest.mark.parametrize("ratio", [0, 1.5, -1])
def test_max_context_ratio_range(ratio: float) -> None:
    with pytest.raises(ConfigError, match="max_context_ratio"):
        load_resource(f"resource: memory\nid: m\nmax_context_ratio: {ratio}\ntoken_provider: {{model: gpt-4}}\n")


# ------------------------------------------------------------------------------- errors with file:line
def test_unknown_top_level_field_suggests_the_right_one(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        resource: memory
        id: m
        max_token: 100
        """,
    )
    assert_points_at(error, path, "max_token:")
    assert "unknown field 'max_token'" in str(error)
    assert "did you mean 'max_tokens'" in str(error)


def test_unknown_top_level_field_without_close_match(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        resource: memory
        id: m
        max_tokens: 100
        colour: blue
        """,
    )
    assert_points_at(error, path, "colour:")
    assert "unknown field 'colour'" in str(error) and "did you mean" not in str(error)


@pytest.mark.parametrize(
    ("block", "typo", "suggestion"),
    [
        ("flushing", "summarize_treshold: 0.5", "summarize_threshold"),
        ("flushing", "typ: lru", "type"),
        ("persistence", "tll: 1h", "ttl"),
        ("privacy_policy", "redact_pattern: []", "redact_patterns"),
        ("locking", "apend_ttl: 1s", "append_ttl"),
    ],
)
def test_unknown_nested_field_suggests_the_right_one(tmp_path: Path, block: str, typo: str, suggestion: str) -> None:
    error, path = load_error(
        tmp_path,
        f"""
        resource: memory
        id: m
        max_tokens: 100
        {block}:
          {typo}
        """,
    )
    assert_points_at(error, path, typo)
    assert f"did you mean '{suggestion}'" in str(error)
    assert f"{block}.{typo.split(':')[0]}" in str(error)


@pytest.mark.parametrize(
    ("text", "needle", "fragment"),
    [
        ("max_tokens: 10\ntype: bogus\n", "type: bogus", "type"),
        ("max_tokens: -5\n", "max_tokens:", "greater than 0"),
        ("max_messages: lots\n", "max_messages:", "integer"),
        ("max_tokens: 10\nflushing:\n  summarize_threshold: 0\n", "summarize_threshold", "greater than 0"),
        (
            "max_tokens: 10\nflushing:\n  summarize_threshold: 1.5\n",
            "summarize_threshold",
            "less than or equal",
        ),
        ("max_tokens: 10\nflushing:\n  type: hybrid_summary\n", "flushing:", "summary_tokens"),
        ("max_tokens: 10\nflushing:\n  type: lru\n  summary_tokens: 0\n", "summary_tokens", "greater than 0"),
        ("max_tokens: 10\nflushing:\n  type: fifo\n", "type: fifo", "simple_fifo"),
        ("max_tokens: 10\ntoken_allocation:\n  short_term: 0.5\n", "token_allocation:", "approximately 1.0"),
        ("max_tokens: 10\nlocking:\n  clear_ttl: soon\n", "clear_ttl", "invalid duration"),
        ('max_tokens: 10\nkey: "conv:{{.user_id"\n', "key:", "unclosed"),
        ("max_tokens: 10\npersistence:\n  type: postgres\n", "type: postgres", "redis"),
        ("max_tokens: 10\narchive_max_messages: -1\n", "archive_max_messages", "greater than or equal"),
    ],
)
def test_errors_start_with_file_and_offending_line(tmp_path: Path, text: str, needle: str, fragment: str) -> None:
    error, path = load_error(tmp_path, "# a comment first\nresource: memory\nid: m\n" + text)
    assert_points_at(error, path, needle)
    assert fragment in str(error)


def test_id_error_points_at_id(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "resource: memory\n\nid: 'has spaces'\nmax_tokens: 10\n")
    assert_points_at(error, path, "id:")


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        resource: memory
        id: m
        max_messages: -1
        flushing:
          summarize_threshold: 2
        """,
    )
    text = str(error)
    assert text.startswith(f"{path}:")
    assert "2 problems" in text
    assert f"{path}:{line_of(path, 'max_messages')}: max_messages" in text
    assert f"{path}:{line_of(path, 'summarize_threshold')}: flushing.summarize_threshold" in text
    assert len(error.context["errors"]) == 2


def test_error_in_second_document_uses_file_lines(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        resource: memory
        id: first
        max_tokens: 10
        ---
        resource: memory
        id: second
        max_tokens: 10
        persistence:
          ttl: never
        """,
    )
    assert_points_at(error, path, "ttl: never")


@pytest.mark.parametrize(
    ("text", "needle", "fragment"),
    [
        ("key: a\nmax_tokens: 10\ndefault_key_template: b\n", "default_key_template", "not both"),
        ("type: token_based\n", "type: token_based", "at least one limit"),
        ("type: message_count_based\nmax_tokens: 5\n", "type: message_count_based", "needs max_messages"),
        ("max_context_ratio: 0.5\ntoken_provider:\n  model: llama-3\n", "max_context_ratio", "known context"),
    ],
)
def test_document_level_errors_point_at_the_field(tmp_path: Path, text: str, needle: str, fragment: str) -> None:
    error, path = load_error(tmp_path, "resource: memory\nid: m\n" + text)
    assert fragment in str(error)
    assert_points_at(error, path, needle)


def test_key_and_default_key_template_together_is_an_error(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "resource: memory\nid: m\nkey: a\nmax_tokens: 10\ndefault_key_template: b\n")
    assert "'key' or 'default_key_template', not both" in str(error)
    assert str(error).startswith(f"{path}:")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("resource: memory\nid: m\nmax_tokens: 10: 20\n", "max_tokens"),
        ("resource: memory\nid: m\nmax_tokens: 10\npersistence:\n  ttl: 1h\n type: redis\n", " type: redis"),
        ("resource: memory\nid: m\n\tmax_tokens: 10\n", "\tmax_tokens"),
        ("resource: memory\nid: m\nmax_tokens: [10, 20\nmax_messages: 3\n", "max_messages"),
    ],
)
def test_malformed_yaml_reports_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    error, path = load_error(tmp_path, text)
    assert_points_at(error, path, needle)
    assert "malformed YAML" in str(error)


def test_malformed_yaml_unterminated_quote_points_at_its_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, 'resource: memory\nid: m\nkey: "unterminated\nmax_tokens: 10\n')
    assert_points_at(error, path, "key:")


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\w+\s?)+$", r"(.*)*x", r"(a|aa)+b", r"([a-z]+)*@"])
def test_catastrophic_redact_pattern_is_rejected(tmp_path: Path, pattern: str) -> None:
    error, path = load_error(
        tmp_path,
        f"""
        resource: memory
        id: m
        max_tokens: 10
        privacy_policy:
          redact_patterns:
            - '\\d{{3}}-\\d{{2}}-\\d{{4}}'
            - '{pattern}'
        """,
    )
    assert error.code == "INVALID_CONFIG"
    assert pattern in str(error)
    assert "redact_patterns[1]" in str(error)
    assert str(error).startswith(f"{path}:")


def test_catastrophic_redact_pattern_error_points_at_the_pattern(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        resource: memory
        id: m
        max_tokens: 10
        privacy_policy:
          redact_patterns:
            - '\\d{3}'
            - '(a+)+$'
        """,
    )
    assert_points_at(error, path, "(a+)+$")


def test_safe_redact_patterns_are_accepted() -> None:
    resource = load_resource(f"""
        resource: memory
        id: m
        max_tokens: 10
        privacy_policy:
          redact_patterns:
            - '{EMAIL_PATTERN}'
            - '\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b'
            - '\\b(?:\\d[ -]*?){{13,16}}\\b'
        """)
    assert resource.privacy_policy is not None and len(resource.privacy_policy.redact_patterns) == 3


# ------------------------------------------------------------------------------------- registration
def _write(root: Path, name: str, text: str) -> Path:
    path = root / "memory" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_yaml(text), encoding="utf-8")
    return path


def test_duplicate_id_across_files_names_both_places(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yaml", "resource: memory\nid: shared\nmax_tokens: 10\n")
    second = _write(
        tmp_path,
        "b.yaml",
        """
        # another file
        resource: memory
        id: other
        max_tokens: 10
        ---
        resource: memory
        id: shared
        max_messages: 5
        """,
    )
    with pytest.raises(ConfigError) as info:
        Project.load(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{second}:")
    assert f"{first}:" in text and "'shared'" in text and "already defined" in text


def test_duplicate_id_error_points_at_both_id_lines(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yaml", "resource: memory\nid: shared\nmax_tokens: 10\n")
    second = _write(tmp_path, "b.yaml", "resource: memory\nmax_messages: 5\nid: shared\n")
    with pytest.raises(ConfigError) as info:
        Project.load(tmp_path)
    assert str(info.value).startswith(f"{second}:3:")
    assert f"{first}:2" in str(info.value)


def test_add_yaml_is_all_or_nothing() -> None:
    project = Project("cfg")
    project.add_yaml("resource: memory\nid: existing\nmax_tokens: 10\n")
    text = _yaml("""
        resource: memory
        id: good_one
        max_tokens: 10
        ---
        resource: memory
        id: good_two
        max_messages: 3
        ---
        resource: memory
        id: broken
        max_tokens: 10
        persistence:
          ttl: whenever
        """)
    with pytest.raises(ConfigError) as info:
        project.add_yaml(text, source="multi.yaml")
    assert str(info.value).startswith("multi.yaml:13:")
    assert set(project.resources) == {"existing"}

    with pytest.raises(ConfigError, match="already defined"):  # duplicate inside one text
        project.add_yaml("resource: memory\nid: a\nmax_tokens: 1\n---\nresource: memory\nid: a\nmax_tokens: 2\n")
    with pytest.raises(ConfigError, match="already defined"):  # duplicate of a registered one
        project.add_yaml(
            "resource: memory\nid: new\nmax_tokens: 1\n---\nresource: memory\nid: existing\nmax_tokens: 2\n"
        )
    assert set(project.resources) == {"existing"}

    assert project.add_yaml(text.split("---")[0] + "---" + text.split("---")[1]) == ["good_one", "good_two"]
    assert set(project.resources) == {"existing", "good_one", "good_two"}
    project.add_yaml("resource: memory\nid: existing\nmax_tokens: 99\n", replace=True)
    assert project.resources["existing"].max_tokens == 99


def test_compozy_resource_fields_are_accepted_and_validated(tmp_path: Path) -> None:
    from compozy_nb import Project

    project = Project()
    project.add_yaml(
        "resource: memory\nid: m\ntype: buffer\nprivacy_scope: user\nexpiration: 7d\n"
        "persistence: {type: redis, ttl: 24h, circuit_breaker: {enabled: true, max_failures: 3}}\n"
    )
    assert project.resource("m").privacy_scope == "user"
    with pytest.raises(ConfigError, match="privacy_scope"):
        project.add_yaml("resource: memory\nid: n\ntype: buffer\nprivacy_scope: tenant\n")
    with pytest.raises(ConfigError, match="expiration"):
        project.add_yaml("resource: memory\nid: n\ntype: buffer\nexpiration: soon\n")


def test_autoload_strict_false_skips_invalid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from compozy_nb import Project

    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "good.yaml").write_text("resource: memory\nid: good\ntype: buffer\n")
    (tmp_path / "memory" / "bad.yaml").write_text("resource: memory\nid: bad\ntype: buffer\nmax_token: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4"):
        Project.load(tmp_path)
    (tmp_path / "compozy.yaml").write_text("name: lenient\nautoload: {strict: false}\n")
    project = Project.load(tmp_path)
    assert list(project.resources) == ["good"]
    assert len(project.load_warnings) == 1 and "bad.yaml:4" in project.load_warnings[0]
    assert "skipped" in capsys.readouterr().err
