"""Tests of compozy_nb.tokens: offline tiktoken vocabularies, counting and model mapping."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiktoken

from compozy_nb import tokens
from compozy_nb.errors import ConfigError
from compozy_nb.tokens import TokenCounter, encoding_for_model, ensure_offline_vocab, get_counter

REPO_ROOT = Path(__file__).resolve().parents[2]
CL100K_FILE = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
O200K_FILE = "fb374d419588a4632f3f557e76b4b70aebbca790"
SAMPLES = [
    "hello world",
    "",
    " ",
    "Hello, World! How are you today?",
    "naïve café — 東京 🚀",
    "def f(x):\n    return x ** 2\n",
    "<|endoftext|> is plain text here",
    "1234567890 " * 20,
]

# Runs in a fresh interpreter: blocks every socket connection, counts, reports as JSON.
_CHILD = textwrap.dedent(
    """
    import json, os, socket, sys

    attempts = []

    def _refuse(*args, **kwargs):
        attempts.append(repr(args))
        raise OSError("network disabled by test")

    socket.socket.connect = _refuse
    socket.create_connection = _refuse

    from compozy_nb.tokens import get_counter

    texts = json.loads(sys.argv[1])
    out = {
        "cl100k_base": [get_counter("gpt-4").count(t) for t in texts],
        "o200k_base": [get_counter("gpt-4o").count(t) for t in texts],
        "message": get_counter().count_message("user", "hello world"),
        "cache_dir": os.environ.get("TIKTOKEN_CACHE_DIR"),
        "attempts": attempts,
    }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module", autouse=True)
def _vocab() -> None:
    """Make the offline vocabularies available to the reference ``tiktoken.get_encoding`` calls."""
    ensure_offline_vocab()


def _expected(encoding: str, texts: list[str]) -> list[int]:
    enc = tiktoken.get_encoding(encoding)
    return [len(enc.encode_ordinary(t)) for t in texts]


def _offline_env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("NO_PROXY", "no_proxy", "TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        env.pop(key, None)
    env.update(
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _run_child(env: dict[str, str], texts: list[str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(texts)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _assert_child_counts(result: dict[str, object], texts: list[str]) -> None:
    assert result["cl100k_base"] == _expected("cl100k_base", texts)
    assert result["o200k_base"] == _expected("o200k_base", texts)
    assert result["message"] == 2 + 1 + 2  # "hello world" + "user" + 2
    assert result["attempts"] == []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- counting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_counts_match_tiktoken(encoding: str) -> None:
    counter = TokenCounter(encoding)
    assert [counter.count(t) for t in SAMPLES] == _expected(encoding, SAMPLES)


def test_known_values() -> None:
    cl100k = TokenCounter()
    assert cl100k.encoding_name == "cl100k_base"
    assert cl100k.count("hello world") == 2
    assert cl100k.count("") == 0
    assert cl100k.count("Hello, World!") == 4
    assert TokenCounter("o200k_base").count("hello world") == 2


def test_special_token_text_is_counted_as_ordinary_text() -> None:
    counter = TokenCounter()
    assert counter.count("<|endoftext|>") > 1


def test_count_message_adds_role_and_two() -> None:
    counter = get_counter()
    assert counter.count_message("user", "hello world") == 2 + 1 + 2
    assert counter.count_message("assistant", "") == counter.count("assistant") + 2
    content = "The quick brown fox jumps over the lazy dog."
    assert counter.count_message("system", content) == counter.count(content) + counter.count("system") + 2


def test_get_counter_is_cached_per_encoding() -> None:
    assert get_counter() is get_counter(None)
    assert get_counter("gpt-4") is get_counter("gpt-3.5-turbo") is get_counter()
    assert get_counter("gpt-4o") is get_counter("o3-mini")
    assert get_counter("gpt-4o").encoding_name == "o200k_base"
    assert get_counter("gpt-4o") is not get_counter("gpt-4")


def test_unsupported_encoding_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported token encoding 'r50k_base'"):
        TokenCounter("r50k_base")


# --- model mapping --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        (None, "cl100k_base"),
        ("", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-32k-0314", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("GPT-4o-2024-05-13", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("openai:gpt-4o", "o200k_base"),
        ("openai:gpt-4", "cl100k_base"),
        ("ft:gpt-4o-mini:my-org::abc123", "o200k_base"),
        ("ft:gpt-3.5-turbo:my-org::abc123", "cl100k_base"),
        ("claude-3-5-sonnet", "cl100k_base"),
        ("llama3", "cl100k_base"),
        ("omni-moderation-latest", "cl100k_base"),
    ],
)
def test_encoding_for_model(model: str | None, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


@pytest.mark.parametrize(
    "model",
    ["gpt-4", "gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4-mini", "gpt-3.5-turbo", "text-embedding-3-large"],
)
def test_encoding_for_model_agrees_with_tiktoken(model: str) -> None:
    assert encoding_for_model(model) == tiktoken.encoding_name_for_model(model)


# --- offline vocabulary files ---------------------------------------------------------------------------


def test_cache_names_and_hashes_match_tiktoken() -> None:
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    for name, vocab in tokens._VOCABS.items():
        assert vocab.cache_key == hashlib.sha1(vocab.url.encode()).hexdigest()
        assert f"encodings/{name}.tiktoken" in vocab.url
        assert f'expected_hash="{vocab.sha256}"' in source
    assert tokens._VOCABS["cl100k_base"].cache_key == CL100K_FILE
    assert tokens._VOCABS["o200k_base"].cache_key == O200K_FILE


def test_ensure_offline_vocab_writes_into_user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "user-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(user_dir))
    assert ensure_offline_vocab() == user_dir
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(user_dir)
    assert _sha256(user_dir / CL100K_FILE) == tokens._VOCABS["cl100k_base"].sha256
    assert _sha256(user_dir / O200K_FILE) == tokens._VOCABS["o200k_base"].sha256
    assert sorted(p.name for p in user_dir.iterdir()) == sorted([CL100K_FILE, O200K_FILE])


def test_ensure_offline_vocab_repairs_corrupt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    (tmp_path / CL100K_FILE).write_bytes(b"aGVsbG8= 0\n")  # parses fine, wrong vocabulary
    ensure_offline_vocab()
    assert _sha256(tmp_path / CL100K_FILE) == tokens._VOCABS["cl100k_base"].sha256


def test_unwritable_user_dir_raises_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ConfigError, match="TIKTOKEN_CACHE_DIR"):
        ensure_offline_vocab()


# --- fresh processes, network disabled ------------------------------------------------------------------


def test_fresh_process_counts_offline_from_empty_user_dir(tmp_path: Path) -> None:
    cache = tmp_path / "fresh"
    result = _run_child(_offline_env(TIKTOKEN_CACHE_DIR=str(cache)), SAMPLES)
    _assert_child_counts(result, SAMPLES)
    assert result["cache_dir"] == str(cache)
    assert (cache / CL100K_FILE).is_file()
    assert (cache / O200K_FILE).is_file()


def test_fresh_process_with_corrupt_user_cache_counts_correctly(tmp_path: Path) -> None:
    # Valid tiktoken syntax but the wrong vocabulary: trusting it would give wrong counts.
    (tmp_path / CL100K_FILE).write_bytes(b"aGVsbG8= 0\nIHdvcmxk 1\n")
    (tmp_path / O200K_FILE).write_bytes(b"truncated")
    result = _run_child(_offline_env(TIKTOKEN_CACHE_DIR=str(tmp_path)), SAMPLES)
    _assert_child_counts(result, SAMPLES)
    assert _sha256(tmp_path / CL100K_FILE) == tokens._VOCABS["cl100k_base"].sha256
    assert _sha256(tmp_path / O200K_FILE) == tokens._VOCABS["o200k_base"].sha256


def test_fresh_process_default_dir_sets_env(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = _run_child(_offline_env(HOME=str(home), TIKTOKEN_CACHE_DIR=None), ["hello world"])
    expected_dir = home / ".cache" / "compozy-nb" / "tiktoken"
    assert result["cache_dir"] == str(expected_dir)
    assert result["cl100k_base"] == [2]
    assert (expected_dir / CL100K_FILE).is_file()


def test_fresh_process_falls_back_to_tempdir(tmp_path: Path) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _offline_env(HOME=str(home), TMPDIR=str(tmp), TIKTOKEN_CACHE_DIR="")
    result = _run_child(env, ["hello world"])
    assert result["cache_dir"] == str(tmp / "compozy-nb-tiktoken")
    assert result["o200k_base"] == [2]
    assert result["attempts"] == []


# ---------------------------------------------------------------------------- long whitespace runs (issue 10)
WHITESPACE_RUNS = [" ", "\n", "\r\n", "\t", "\u00a0", " \n", "\n ", " \u3000", "\u2028"]
TEXT_BITS = [" ", "\n", "a", "Z", "é", "!", ".", "1", "'", "s", "中", "-", "/", "\x1c", "\u0301"]


def _hostile_text(seed: int) -> str:
    import random

    rnd = random.Random(seed)
    parts = []
    for _ in range(rnd.randint(1, 6)):
        if rnd.random() < 0.5:
            parts.append("".join(rnd.choice(TEXT_BITS) for _ in range(rnd.randint(0, 12))))
        else:
            parts.append(rnd.choice(WHITESPACE_RUNS) * rnd.randint(200, 1500))
    return "".join(parts)


@pytest.mark.parametrize("encoding", tokens.SUPPORTED_ENCODINGS)
def test_long_whitespace_runs_are_counted_exactly(encoding: str) -> None:
    """Counting in parts (split inside long whitespace runs) gives tiktoken's own count, on inputs tiktoken can
    handle: runs of every kind of whitespace, before and after letters, digits, punctuation and marks."""
    counter = TokenCounter(encoding)
    reference = tiktoken.get_encoding(encoding)
    texts = [_hostile_text(seed) for seed in range(150)]
    texts += [
        " " * 5000,
        "x" + " " * 5000 + "x",
        "!" + "\n" * 5000 + "x",
        "a." + "\n" * 3000 + "  " * 2000,
        "\u00a0" * 5000 + "!",
        "end" + "\r\n" * 3000,
    ]
    for text in texts:
        assert counter.count(text) == len(reference.encode_ordinary(text)), repr(text[:60])


def test_split_parts_rebuild_the_text() -> None:
    text = "a" + " " * 3000 + "b\n" + "\n" * 2000 + "  c" + " " * 1500
    parts = tokens.split_at_long_whitespace(text)
    assert "".join(part for part, _ in parts) == text
    assert max(len(part) for part, whole in parts if not whole) < tokens.LONG_WHITESPACE_RUN


@pytest.mark.parametrize("encoding", tokens.SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("text", [" " * 1_000_000 + "x", "x" + "\u00a0" * 1_000_000 + "x", " " * 1_000_000])
def test_a_million_spaces_never_crash_the_tokenizer(encoding: str, text: str) -> None:
    """tiktoken alone panics (pyo3_runtime.PanicException) on such runs; the chunked count does not."""
    counter = TokenCounter(encoding)
    assert counter.count(text) > 0


def test_a_tokenizer_panic_is_an_invalid_payload_error() -> None:
    """The boundary: o200k's regex overflows its stack on a million spaces followed by a letter (given whole,
    bypassing the split); the Rust panic (a BaseException) becomes INVALID_PAYLOAD without the text."""
    from compozy_nb.errors import InvalidPayloadError

    counter = TokenCounter("o200k_base")
    with pytest.raises(InvalidPayloadError) as caught:
        counter._count_piece(" " * 1_000_000 + "x")
    assert caught.value.code == "INVALID_PAYLOAD"
    assert "      " not in str(caught.value)


def test_size_is_checked_before_counting(tmp_path: Path) -> None:
    """An oversize message is refused by its length before the tokenizer sees it (4 M newlines took 10 s)."""
    from compozy_nb import Project
    from compozy_nb.errors import LimitExceededError

    project = Project.load(Path(__file__).resolve().parents[2], redis_url="embedded://size-before-count")
    memory = project.memory("conversation_memory", key="k")
    with pytest.raises(LimitExceededError, match="its content alone is 4000001 characters"):
        memory.append("\n" * 4_000_000 + "x")
    assert memory.read()["total_count"] == 0
