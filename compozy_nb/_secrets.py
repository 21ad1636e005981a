"""Keeping credentials out of everything we print: URLs with passwords or tokens, API keys in echoed text.

``mask_url`` hides ``user:password@`` (and a lone ``token@``) and the values of credential-like query
parameters (``?password=``, ``?api_key=`` ...); ``scrub`` removes known secrets and ``Bearer`` tokens from
any text we echo (a provider's error body, an exception message).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
_SECRET_PARAMS = re.compile(r"(pass(word)?|pwd|secret|token|key|auth|credential|signature|sig)", re.IGNORECASE)
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/\-]{6,}=*)")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


class MaskedStr(str):
    """A string (a URL holding credentials) whose ``repr`` hides them; the value itself is unchanged."""

    def __repr__(self) -> str:
        return repr(mask_url(str(self)))


class HiddenStr(str):
    """A secret value (an API key in settings) whose ``repr`` is ``'***'``; the value itself is unchanged."""

    def __repr__(self) -> str:
        return repr(MASK)


def is_secret_name(name: str) -> bool:
    """Whether a setting or query parameter named ``name`` holds a credential (``password``, ``api_key`` ...)."""
    return bool(_SECRET_PARAMS.search(name))


def mask_url(url: str) -> str:
    """The URL with its password (or lone token user) and credential-like query values replaced by ``***``.

    A string that cannot be parsed as a URL is returned with every ``:…@`` part masked, never raising.
    """
    try:
        parts = urlsplit(url)
        netloc = _mask_netloc(parts.netloc)
        query = _mask_query(parts.query)
    except ValueError:
        return re.sub(r"//[^/@\s]*@", f"//{MASK}@", url)
    if netloc == parts.netloc and query == parts.query:
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def _mask_netloc(netloc: str) -> str:
    if "@" not in netloc:
        return netloc
    userinfo, _, host = netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    if sep:
        return f"{user}:{MASK}@{host}"
    # a lone userinfo (``https://TOKEN@host``) is how tokens are passed to many gateways
    return f"{MASK}@{host}"


def _mask_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_SECRET_PARAMS.search(name) for name, _ in pairs):
        return query
    pieces = []
    for piece in query.split("&"):
        name, sep, _value = piece.partition("=")
        pieces.append(f"{name}={MASK}" if sep and _SECRET_PARAMS.search(name) else piece)
    return "&".join(pieces)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the given secrets, ``Bearer``/``Basic`` tokens, ``sk-…`` keys and URL credentials."""
    text = scrub_exact(text, secrets)
    text = _AUTH_VALUE.sub(_mask_auth_value, text)
    text = _SK_KEY.sub(f"sk-{MASK}", text)
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def _mask_auth_value(match: re.Match[str]) -> str:
    """``Bearer <token>`` always; ``Basic <value>`` only when the value is base64 of ``user:password`` (so
    that "Basic authentication failed" stays readable)."""
    scheme, space, value = match.group(1), match.group(2), match.group(3)
    if scheme.lower() == "basic" and ":" not in _b64_text(value):
        return match.group(0)
    return f"{scheme}{space}{MASK}"


def _b64_text(value: str) -> str:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8", "replace")
    except (ValueError, binascii.Error):
        return ""


def excerpt(text: str, secrets: Iterable[str | None] = (), limit: int = 200) -> str:
    """A short, one-line, credential-free excerpt of a reply body for an error message."""
    flat = " ".join(scrub(text, secrets).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def scrub_exact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with only the given secrets replaced (for content we keep, e.g. a reply echoing the key)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text
