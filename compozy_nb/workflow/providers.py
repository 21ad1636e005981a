"""LLM providers of ``basic`` tasks: ``openai`` (any OpenAI-compatible server), ``python``, ``scripted``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compozy_nb.errors import CompozyNbError, ConfigError
from compozy_nb.templating import render
from compozy_nb.tokens import get_counter

Message = dict[str, Any]
PythonLLM = Callable[[list[Message]], Any]
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class ProviderError(CompozyNbError):
    """The LLM call failed (HTTP error, timeout, bad reply)."""

    code = "PROVIDER_ERROR"


@dataclass
class ChatRequest:
    """One call: the exact messages sent and the call options."""

    messages: list[Message]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 60.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatResponse:
    """A reply, normalised across providers."""

    content: str
    model: str | None
    provider: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    role: str = "assistant"
    tool_calls: list[dict[str, Any]] | None = None
    """The tool calls of the reply (OpenAI shape), when the model asked for tools."""


def _count_prompt(messages: Sequence[Mapping[str, Any]]) -> int:
    counter = get_counter(None)
    from compozy_nb.memory.transcript import count_tokens

    return sum(count_tokens(counter, m) for m in messages)


class Registry:
    """Python callables registered as LLMs (``provider: python``) and scripted-reply state."""

    def __init__(self) -> None:
        self.functions: dict[str, PythonLLM] = {}
        self.tools: dict[str, Callable[..., Any]] = {}
        self._turns: dict[str, int] = {}
        self._lock = threading.Lock()

    def register(self, name: str, func: PythonLLM | None = None) -> Any:
        """Register ``func`` under ``name``; usable as a decorator: ``@registry.register("echo")``."""

        def decorate(fn: PythonLLM) -> PythonLLM:
            self.functions[name] = fn
            return fn

        return decorate(func) if func is not None else decorate

    def register_tool(self, name: str, func: Callable[..., Any] | None = None) -> Any:
        """Register a Python tool that a workflow runs when the model calls ``name`` (its JSON arguments as
        keyword arguments; the result, JSON-encoded unless a string, is the tool message). Usable as a
        decorator: ``@registry.register_tool("get_weather")``."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.tools[name] = fn
            return fn

        return decorate(func) if func is not None else decorate

    def next_turn(self, slot: str) -> int:
        """The 0-based call number of a scripted task (kept across runs)."""
        with self._lock:
            turn = self._turns.get(slot, 0)
            self._turns[slot] = turn + 1
            return turn

    def reset(self) -> None:
        """Forget scripted-reply positions."""
        with self._lock:
            self._turns.clear()


def call_scripted(request: ChatRequest, registry: Registry, slot: str) -> ChatResponse:
    """Replies from a list (in order, cycling) or a template rendered with the messages."""
    replies: list[str] | None = request.options.get("replies")
    template: str | None = request.options.get("reply_template")
    turn = registry.next_turn(slot)
    if replies:
        content = replies[turn % len(replies)]
    else:
        users = [m for m in request.messages if m.get("role") == "user"]
        context = {
            "messages": request.messages,
            "last_user_message": users[-1]["content"] if users else "",
            "turn": turn + 1,
            "input": request.options.get("input", {}),
        }
        content = render(template or "", context)
    return ChatResponse(
        content,
        request.model or "scripted",
        "scripted",
        _count_prompt(request.messages),
        get_counter(None).count(content),
    )


def call_python(request: ChatRequest, registry: Registry) -> ChatResponse:
    """Call a registered Python function with the messages; it returns text or a dict with ``content``."""
    name = request.options.get("function") or request.model or ""
    func = registry.functions.get(name)
    if func is None:
        known = ", ".join(sorted(registry.functions)) or "none registered"
        raise ConfigError(f"no Python LLM registered as '{name}' (registered: {known})", field="function")
    try:
        result = func([dict(m) for m in request.messages])
    except CompozyNbError:
        raise
    except Exception as exc:
        raise ProviderError(f"python LLM '{name}' raised {type(exc).__name__}: {exc}") from exc
    if isinstance(result, str):
        reply: dict[str, Any] = {"content": result}
    elif isinstance(result, Mapping) and (
        isinstance(result.get("content"), str) or (result.get("content") is None and result.get("tool_calls"))
    ):
        reply = dict(result)
    else:
        raise ProviderError(
            f"python LLM '{name}' must return a string or a dict with 'content' (or 'tool_calls'), "
            f"got {type(result).__name__}"
        )
    usage = reply.get("usage") or {}
    content = str(reply.get("content") or "")
    calls = reply.get("tool_calls")
    return ChatResponse(
        content,
        str(reply.get("model") or name),
        "python",
        int(usage.get("prompt_tokens", _count_prompt(request.messages))),
        int(usage.get("completion_tokens", get_counter(None).count(content))),
        str(reply.get("finish_reason", "tool_calls" if calls else "stop")),
        tool_calls=list(calls) if isinstance(calls, list) and calls else None,
    )


def call_openai(request: ChatRequest, *, retries: int = 3, backoff: float = 0.5) -> ChatResponse:
    """POST ``{base_url}/chat/completions``; retries 429 and 5xx (honouring Retry-After), not 4xx.

    The API key comes from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``). It is
    required for the default OpenAI URL; a custom ``base_url`` (Ollama, vLLM, llama.cpp) may go without.
    """
    import httpx

    base_url = str(request.options.get("base_url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL)
    key_env = str(request.options.get("api_key_env") or "OPENAI_API_KEY")
    api_key = os.environ.get(key_env)
    if not api_key and base_url.rstrip("/") == DEFAULT_OPENAI_URL:
        raise ConfigError(
            f"missing API key: set the environment variable {key_env} (or api_key_env on the task) "
            "before calling the openai provider",
            field="api_key_env",
        )
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    for name in ("tools", "tool_choice"):
        if request.options.get(name) is not None:
            body[name] = request.options[name]
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = base_url.rstrip("/") + "/chat/completions"
    attempt = 0
    while True:
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=request.timeout)
        except httpx.TimeoutException:
            raise ProviderError(
                f"openai: no answer from {url} within {request.timeout:g} s", code="PROVIDER_TIMEOUT"
            ) from None
        except httpx.HTTPError as exc:
            if attempt < retries:
                attempt += 1
                time.sleep(backoff * 2 ** (attempt - 1))
                continue
            raise ProviderError(f"openai: cannot reach {url}: {exc}") from None
        if (response.status_code == 429 or response.status_code >= 500) and attempt < retries:
            attempt += 1
            time.sleep(_retry_after(response.headers.get("retry-after"), backoff * 2 ** (attempt - 1)))
            continue
        if response.status_code in (401, 403):
            raise ProviderError(
                f"openai: authentication failed ({response.status_code}) at {url}: check {key_env}",
                code="PROVIDER_AUTH_ERROR",
            )
        if response.status_code >= 400:
            raise ProviderError(f"openai: HTTP {response.status_code} from {url}: {_error_text(response)}")
        return _parse_openai(response.json(), request)


def _retry_after(value: str | None, default: float) -> float:
    try:
        return min(float(value), 30.0) if value else default
    except ValueError:
        return default


def _error_text(response: Any) -> str:
    try:
        data = response.json()
        err = data.get("error", data)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except ValueError:
        return str(response.text)[:300]


def _parse_openai(data: Any, request: ChatRequest) -> ChatResponse:
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        calls = choice["message"].get("tool_calls") or None
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ProviderError(f"openai: unexpected reply shape: {str(data)[:200]}") from None
    usage = data.get("usage") or {}
    return ChatResponse(
        str(content),
        str(data.get("model") or request.model),
        "openai",
        int(usage.get("prompt_tokens") or _count_prompt(request.messages)),
        int(usage.get("completion_tokens") or get_counter(None).count(str(content))),
        str(choice.get("finish_reason") or "stop"),
        tool_calls=list(calls) if isinstance(calls, list) else None,
    )


def complete(provider: str, request: ChatRequest, registry: Registry, slot: str) -> ChatResponse:
    """Dispatch to a provider."""
    if provider == "scripted":
        return call_scripted(request, registry, slot)
    if provider == "python":
        return call_python(request, registry)
    if provider == "openai":
        return call_openai(request)
    raise ConfigError(f"unknown provider '{provider}'", field="provider")
