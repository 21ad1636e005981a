"""LLM providers of ``basic`` tasks: ``openai`` (any OpenAI-compatible server), ``python``, ``scripted``."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload
from urllib.parse import unquote, urlsplit

from compozy_nb._secrets import excerpt, mask_url, scrub, scrub_exact
from compozy_nb.config.memory import PROVIDERS
from compozy_nb.errors import CompozyNbError, ConfigError, ErrorCode
from compozy_nb.errors import ProviderError as ProviderError  # re-exported: its home before errors.py
from compozy_nb.templating import render
from compozy_nb.tokens import get_counter

Message = dict[str, Any]
PythonLLM = Callable[[list[Message]], Any]
F = TypeVar("F", bound=Callable[..., Any])  # a registered function: the decorators return it unchanged
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024
"""Largest reply body read from an OpenAI-compatible server (``max_reply_bytes`` changes it)."""
RETRY_STATUSES = frozenset({429, 500, 502, 503})
"""Answers after which a request is sent again (the server says it did not produce a completion)."""


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

    @overload
    def register(self, name: str, func: None = None) -> Callable[[F], F]: ...

    @overload
    def register(self, name: str, func: F) -> F: ...

    def register(self, name: str, func: PythonLLM | None = None) -> Any:
        """Register ``func`` under ``name``; usable as a decorator: ``@registry.register("echo")``."""

        def decorate(fn: PythonLLM) -> PythonLLM:
            self.functions[name] = fn
            return fn

        return decorate(func) if func is not None else decorate

    @overload
    def register_tool(self, name: str, func: None = None) -> Callable[[F], F]: ...

    @overload
    def register_tool(self, name: str, func: F) -> F: ...

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
    """Call a registered Python function with the messages; it returns text or a dict with ``content``.

    The function runs in a daemon worker thread bounded by the task's ``timeout``: past it the call fails
    with PROVIDER_TIMEOUT while the function keeps running in the background (Python cannot stop a thread).
    An ``async def`` function is run to completion on the worker thread's own event loop.
    """
    func, name = _python_function(request, registry)
    finished = threading.Event()
    box = _start_python(func, [dict(m) for m in request.messages], name, finished.set)
    finished.wait(request.timeout)
    return _python_reply(_python_result(box, name, request.timeout), request, name)


async def acall_python(request: ChatRequest, registry: Registry) -> ChatResponse:
    """:func:`call_python` on the event loop: an ``async def`` function is awaited (cancelled past the
    timeout); a plain function runs in a daemon worker thread the loop waits for without blocking."""
    func, name = _python_function(request, registry)
    messages = [dict(m) for m in request.messages]
    if inspect.iscoroutinefunction(func):
        try:
            result = await asyncio.wait_for(func(messages), request.timeout)
        except TimeoutError:
            raise _python_timeout(name, request.timeout, running=False) from None
        except CompozyNbError:
            raise
        except Exception as exc:
            raise _python_failed(name, exc) from exc
        return _python_reply(result, request, name)
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(_settle, finished)
        except RuntimeError:  # the loop is gone (the caller stopped waiting long ago)
            pass

    box = _start_python(func, messages, name, wake)
    try:
        await asyncio.wait_for(asyncio.shield(finished), request.timeout)
    except TimeoutError:
        pass
    return _python_reply(_python_result(box, name, request.timeout), request, name)


def _python_function(request: ChatRequest, registry: Registry) -> tuple[PythonLLM, str]:
    name = str(request.options.get("function") or request.model or "")
    func = registry.functions.get(name)
    if func is None:
        known = ", ".join(sorted(registry.functions)) or "none registered"
        raise ConfigError(f"no Python LLM registered as '{name}' (registered: {known})", field="function")
    return func, name


def _start_python(func: PythonLLM, messages: list[Message], name: str, done: Callable[[], None]) -> dict[str, Any]:
    """``func(messages)`` in a daemon thread; the returned box gets its ``result`` or ``error``, then ``done()``
    is called. An awaitable result is run to completion on the thread's own event loop."""
    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def work() -> None:
        try:
            result = context.run(func, messages)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            box["result"] = result
        except BaseException as exc:  # anything the user's function raises is reported, never lost
            box["error"] = exc
        finally:
            done()

    threading.Thread(target=work, name=f"compozy-nb python LLM {name}", daemon=True).start()
    return box


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _awaited(value: Any) -> Any:
    return await value


def _python_result(box: Mapping[str, Any], name: str, timeout: float) -> Any:
    """What the function returned; its exception or a missed deadline as a ProviderError."""
    if "result" not in box and "error" not in box:
        raise _python_timeout(name, timeout, running=True)
    error = box.get("error")
    if isinstance(error, CompozyNbError):
        raise error
    if error is not None:
        raise _python_failed(name, error) from error
    return box.get("result")


def _python_timeout(name: str, timeout: float, *, running: bool) -> ProviderError:
    still = "; the function keeps running in a background thread" if running else " (cancelled)"
    return ProviderError(
        f"python LLM '{name}' did not return within {timeout:g} s (timeout){still}",
        code=ErrorCode.PROVIDER_TIMEOUT,
        provider="python",
    )


def _python_failed(name: str, error: BaseException) -> ProviderError:
    return ProviderError(f"python LLM '{name}' raised {type(error).__name__}: {excerpt(str(error))}", provider="python")


def _python_reply(result: Any, request: ChatRequest, name: str) -> ChatResponse:
    """Check the shape a Python LLM returned: text, or ``{"content": str, "usage"?: {...}, "model"?, ...}``."""
    if isinstance(result, str):
        reply: dict[str, Any] = {"content": result}
    elif isinstance(result, Mapping) and (
        isinstance(result.get("content"), str) or (result.get("content") is None and result.get("tool_calls"))
    ):
        reply = dict(result)
    else:
        raise ProviderError(
            f"python LLM '{name}' must return a string or a dict with 'content' (a string, or None with "
            f"'tool_calls'), got {_describe(result)}",
            provider="python",
        )
    where = f"python LLM '{name}'"
    for optional in ("model", "finish_reason"):
        if reply.get(optional) is not None and not isinstance(reply[optional], str):
            raise ProviderError(
                f"{where}: '{optional}' must be a string, got {_describe(reply[optional])}", provider="python"
            )
    content = reply["content"] if isinstance(reply.get("content"), str) else ""  # None with tool_calls
    calls = reply.get("tool_calls")
    prompt_tokens, completion_tokens = _usage(reply.get("usage"), request, content, where)
    return ChatResponse(
        content,
        str(reply.get("model") or name),
        "python",
        prompt_tokens,
        completion_tokens,
        str(reply.get("finish_reason") or ("tool_calls" if calls else "stop")),
        tool_calls=list(calls) if isinstance(calls, list) and calls else None,
    )


def _describe(value: Any) -> str:
    return type(value).__name__


def _usage(usage: Any, request: ChatRequest, content: str, where: str) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` from a reply's ``usage`` (counted locally when absent).

    Raises:
        ProviderError: ``usage`` is not a mapping, or a count is not a non-negative whole number.
    """
    if usage is None:
        usage = {}
    if not isinstance(usage, Mapping):
        raise ProviderError(f"{where}: 'usage' must be an object, got {_describe(usage)}")
    prompt = _token_count(usage.get("prompt_tokens"), "prompt_tokens", where)
    completion = _token_count(usage.get("completion_tokens"), "completion_tokens", where)
    return (
        _count_prompt(request.messages) if prompt is None else prompt,
        get_counter(None).count(content) if completion is None else completion,
    )


def _token_count(value: Any, name: str, where: str) -> int | None:
    """A token count from ``usage``: a non-negative whole number, or None when absent."""
    if value is None:
        return None
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or number != number or number < 0 or number == float("inf") or int(number) != number:
        raise ProviderError(
            f"{where}: usage.{name} must be a non-negative whole number, got {excerpt(repr(value), limit=40)}"
        )
    return int(number)


# ---------------------------------------------------------------------------- openai
@dataclass(frozen=True)
class _Target:
    """Where an OpenAI-compatible call goes: the URL without credentials, and what may be printed."""

    url: str
    shown: str
    auth: tuple[str, str] | None
    key_env: str
    api_key: str | None
    max_bytes: int

    @property
    def secrets(self) -> list[str | None]:
        """Credentials to scrub from any text we echo."""
        return [self.api_key, *(self.auth or ())]


def _target(request: ChatRequest) -> _Target:
    base_url = str(request.options.get("base_url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL)
    key_env = str(request.options.get("api_key_env") or "OPENAI_API_KEY")
    api_key = os.environ.get(key_env) or None
    shown_base = mask_url(base_url)
    try:
        parts = urlsplit(base_url)
        auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
        host = parts.netloc.rpartition("@")[2]
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"malformed base_url {shown_base}: {scrub(str(exc))}", field="base_url") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"base_url must be an http(s) URL, got {shown_base}", field="base_url")
    if not api_key and base_url.rstrip("/") == DEFAULT_OPENAI_URL:
        raise ConfigError(
            f"missing API key: set the environment variable {key_env} (or api_key_env on the task) "
            "before calling the openai provider",
            field="api_key_env",
        )
    clean = parts._replace(netloc=host).geturl().rstrip("/") + "/chat/completions"
    return _Target(clean, mask_url(clean), auth, key_env, api_key, _max_bytes(request.options.get("max_reply_bytes")))


def _max_bytes(value: Any) -> int:
    if value is None:
        return DEFAULT_MAX_REPLY_BYTES
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"max_reply_bytes must be a positive integer, got {value!r:.40}", field="max_reply_bytes")
    return value


class _MaskUrlsInLogs(logging.Filter):
    """httpx logs every request's URL (at INFO): hide credentials in a ``?api_key=``-style query there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(mask_url(str(a)) if "://" in str(a)[:16] else a for a in record.args)
        return True


def _mask_httpx_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _MaskUrlsInLogs) for f in logger.filters):
        logger.addFilter(_MaskUrlsInLogs())


@dataclass
class _Reply:
    """One HTTP answer read within the bounds."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _RetryableError(ProviderError):
    """A failure that happened before the request could reach the server (safe to send again)."""


class _OpenAICall:
    """One call to an OpenAI-compatible server, written once for both transports: the body, headers and
    deadline, the retry plan (:meth:`plan`) and the bounded reading of one answer (:meth:`start`,
    :meth:`feed`, :meth:`failure`). :func:`call_openai` drives it with ``httpx.Client``, :func:`acall_openai`
    with ``httpx.AsyncClient``."""

    def __init__(self, request: ChatRequest, retries: int, backoff: float) -> None:
        self.request, self.retries, self.backoff = request, retries, backoff
        self.target = target = _target(request)
        _mask_httpx_logs()
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        for name in ("tools", "tool_choice"):
            if request.options.get(name) is not None:
                body[name] = request.options[name]
        self.body = body
        self.headers = {"Content-Type": "application/json"}
        if target.api_key:
            self.headers["Authorization"] = f"Bearer {target.api_key}"
        self.deadline = time.monotonic() + request.timeout
        # user:token@ in base_url becomes Basic auth (so it never appears in a logged URL); an API key wins
        self.auth = None if target.api_key else target.auth
        self.status: int | None = None
        self.marked_safe = False
        self.chunks: list[bytes] = []
        self.size = 0

    def plan(self) -> Generator[float, _Reply, ChatResponse]:
        """The retry plan: yields the seconds to wait before each send (0 for the first) and receives its
        answer; a :class:`_RetryableError` thrown in is a send that never reached the server."""
        attempt, delay = 0, 0.0
        while True:
            try:
                reply = yield delay
            except _RetryableError as exc:
                if attempt >= self.retries:
                    raise ProviderError(exc.message, **exc.context) from None
                attempt += 1
                delay = self._wait(self.backoff * 2 ** (attempt - 1), exc.message.removeprefix("openai: "))
                continue
            if _should_retry(reply) and attempt < self.retries:
                attempt += 1
                wanted = _retry_after(reply.headers.get("retry-after"), self.backoff * 2 ** (attempt - 1))
                delay = self._wait(wanted, f"HTTP {reply.status} from {self.target.shown}")
                continue
            return _openai_response(reply, self.target, self.request)

    def _wait(self, delay: float, after: str) -> float:
        """``delay``, or a failure at once when the retry could not start before the deadline."""
        if time.monotonic() + delay >= self.deadline:
            raise ProviderError(
                f"openai: {after}; a retry in {delay:g} s would pass the task's timeout of {self.request.timeout:g} s",
                code=ErrorCode.PROVIDER_TIMEOUT,
                provider="openai",
            )
        return delay

    def remaining(self) -> float:
        """Seconds left for the next send (a timeout error when none are)."""
        self.status, self.marked_safe, self.chunks, self.size = None, False, [], 0
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(self.target, self.request.timeout)
        return remaining

    def start(self, status: int, headers: Mapping[str, str]) -> None:
        """An answer began: refuse it when it declares a body over the bound."""
        self.status = status
        self.marked_safe = headers.get("x-should-retry", "").lower() == "true"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.target.max_bytes:
            raise _too_large(self.target, status)

    def feed(self, chunk: bytes) -> None:
        """One chunk of the body, within the size bound and the deadline."""
        self.size += len(chunk)
        if self.size > self.target.max_bytes:
            raise _too_large(self.target, self.status or 0)
        if time.monotonic() > self.deadline:
            raise _timeout(self.target, self.request.timeout)
        self.chunks.append(chunk)

    def reply(self, headers: Mapping[str, str]) -> _Reply:
        """The answer read in full."""
        return _Reply(self.status or 0, dict(headers), b"".join(self.chunks))

    def failure(self, exc: Exception) -> ProviderError:
        """What an httpx error during one send means: a retryable failure to connect, a timeout, or a reply
        cut short (retried only when the server marked it safe: it may have run and billed the completion)."""
        import httpx

        target, total = self.target, self.request.timeout
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            if time.monotonic() >= self.deadline:
                return _timeout(target, total)
            return _RetryableError(
                f"openai: cannot connect to {target.shown}: {scrub(str(exc), target.secrets)[:200]}",
                provider="openai",
                url=target.shown,
            )
        if isinstance(exc, httpx.TimeoutException):
            return _timeout(target, total)
        cls = _RetryableError if self.marked_safe else ProviderError
        status = self.status
        cut = f"HTTP {status} reply cut short" if status is not None else "connection closed before any reply"
        outcome = (
            "the server marked it safe to retry"
            if self.marked_safe
            else "not sent again: the server may have processed it"
        )
        return cls(
            f"openai: {cut} from {target.shown} ({type(exc).__name__}: {scrub(str(exc), target.secrets)[:120]}); "
            f"{outcome}",
            provider="openai",
            url=target.shown,
            status=status,
        )


def call_openai(request: ChatRequest, *, retries: int = 3, backoff: float = 0.5) -> ChatResponse:
    """POST ``{base_url}/chat/completions`` and return the normalised reply.

    ``request.timeout`` is a deadline for the whole call, retries and ``Retry-After`` waits included. A
    request is sent again only when it cannot have been processed: a connection that was never made, or
    an answer 429/500/502/503 (or any answer marked ``x-should-retry: true``; ``false`` forbids it). A
    connection cut while waiting for or reading the answer is never retried: the server may have run (and
    billed) the completion. Replies are read in a stream bounded by ``max_reply_bytes``
    (:data:`DEFAULT_MAX_REPLY_BYTES`). The API key comes from the environment variable ``api_key_env``
    (default ``OPENAI_API_KEY``); it is required for the default OpenAI URL only.
    """
    import httpx

    call = _OpenAICall(request, retries, backoff)
    plan = call.plan()
    delay = next(plan)
    with httpx.Client(auth=call.auth, follow_redirects=False) as client:
        while True:
            if delay:
                time.sleep(delay)
            try:
                outcome: _Reply | _RetryableError = _send(client, call)
            except _RetryableError as exc:
                outcome = exc
            step = _advance(plan, outcome)
            if isinstance(step, ChatResponse):
                return step
            delay = step


async def acall_openai(request: ChatRequest, *, retries: int = 3, backoff: float = 0.5) -> ChatResponse:
    """:func:`call_openai` on ``httpx.AsyncClient``: the same request, retries, deadline and bounds, without
    a thread."""
    import httpx

    call = _OpenAICall(request, retries, backoff)
    plan = call.plan()
    delay = next(plan)
    async with httpx.AsyncClient(auth=call.auth, follow_redirects=False) as client:
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                outcome: _Reply | _RetryableError = await _asend(client, call)
            except _RetryableError as exc:
                outcome = exc
            step = _advance(plan, outcome)
            if isinstance(step, ChatResponse):
                return step
            delay = step


def _advance(plan: Generator[float, _Reply, ChatResponse], outcome: _Reply | _RetryableError) -> float | ChatResponse:
    """Give the plan one send's outcome: the seconds to wait before the next send, or the final reply."""
    try:
        return plan.throw(outcome) if isinstance(outcome, _RetryableError) else plan.send(outcome)
    except StopIteration as done:
        return cast(ChatResponse, done.value)


def _send(client: Any, call: _OpenAICall) -> _Reply:
    """One POST, read as a stream within the deadline and the size bound."""
    import httpx

    timeout = httpx.Timeout(call.remaining())
    try:
        with client.stream("POST", call.target.url, json=call.body, headers=call.headers, timeout=timeout) as resp:
            call.start(resp.status_code, resp.headers)
            for chunk in resp.iter_bytes():
                call.feed(chunk)
            return call.reply(resp.headers)
    except httpx.HTTPError as exc:
        raise call.failure(exc) from None


async def _asend(client: Any, call: _OpenAICall) -> _Reply:
    """:func:`_send` on an async client."""
    import httpx

    timeout = httpx.Timeout(call.remaining())
    try:
        async with client.stream(
            "POST", call.target.url, json=call.body, headers=call.headers, timeout=timeout
        ) as resp:
            call.start(resp.status_code, resp.headers)
            async for chunk in resp.aiter_bytes():
                call.feed(chunk)
            return call.reply(resp.headers)
    except httpx.HTTPError as exc:
        raise call.failure(exc) from None


def _should_retry(reply: _Reply) -> bool:
    marker = reply.headers.get("x-should-retry", "").lower()
    if marker in ("true", "false"):
        return marker == "true"
    return reply.status in RETRY_STATUSES


def _timeout(target: _Target, total: float) -> ProviderError:
    return ProviderError(
        f"openai: no complete answer from {target.shown} within the task's timeout of {total:g} s",
        code=ErrorCode.PROVIDER_TIMEOUT,
        provider="openai",
        url=target.shown,
    )


def _too_large(target: _Target, status: int) -> ProviderError:
    return ProviderError(
        f"openai: HTTP {status} reply from {target.shown} is larger than max_reply_bytes ({target.max_bytes:,} bytes)",
        provider="openai",
        url=target.shown,
        status=status,
    )


def _retry_after(value: str | None, default: float) -> float:
    try:
        seconds = float(value) if value else default
    except ValueError:
        return default
    return min(max(seconds, 0.0), 30.0) if seconds == seconds else default


def _openai_response(reply: _Reply, target: _Target, request: ChatRequest) -> ChatResponse:
    """The reply of a finished call, or a ProviderError with the status and a credential-free excerpt."""
    text = reply.body.decode("utf-8", "replace")
    where = f"HTTP {reply.status} from {target.shown}"
    context: dict[str, Any] = {"provider": "openai", "url": target.shown, "status": reply.status}
    if 300 <= reply.status < 400:
        location = mask_url(reply.headers.get("location", "") or "?")
        raise ProviderError(
            f"openai: {where} redirects to {scrub(location, target.secrets)[:200]}; "
            "set base_url to the API itself (redirects are not followed)",
            **context,
        )
    if reply.status in (401, 403):
        raise ProviderError(
            f"openai: authentication failed ({where}): check {target.key_env}",
            code=ErrorCode.PROVIDER_AUTH_ERROR,
            **context,
        )
    if reply.status >= 400 or reply.status < 200:
        raise ProviderError(f"openai: {where}: {_error_text(text, target)}", **context)
    try:
        data = json.loads(text)
    except ValueError:
        raise ProviderError(f"openai: {where} is not JSON: {excerpt(text, target.secrets)!r}", **context) from None
    return _parse_openai(data, request, target, where)


def _error_text(text: str, target: _Target) -> str:
    """The error message of an error body (``{"error": {"message"}}`` or the raw text), short and scrubbed."""
    try:
        data = json.loads(text)
    except ValueError:
        return excerpt(text, target.secrets)
    err = data.get("error", data) if isinstance(data, dict) else data
    message = err.get("message", err) if isinstance(err, dict) else err
    return excerpt(str(message), target.secrets)


def _parse_openai(data: Any, request: ChatRequest, target: _Target, where: str) -> ChatResponse:
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        calls = choice["message"].get("tool_calls") or None
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ProviderError(
            f"openai: unexpected reply shape ({where}): {excerpt(json.dumps(data)[:2000], target.secrets)}",
            provider="openai",
            url=target.shown,
        ) from None
    if not isinstance(content, str):
        raise ProviderError(f"openai: {where}: message content is {_describe(content)}, not text", provider="openai")
    content = scrub_exact(content, target.secrets)
    model = data.get("model") if isinstance(data.get("model"), str) else request.model
    finish = choice.get("finish_reason") if isinstance(choice, Mapping) else None
    prompt_tokens, completion_tokens = _usage(data.get("usage"), request, content, f"openai: {where}")
    return ChatResponse(
        content,
        str(model),
        "openai",
        prompt_tokens,
        completion_tokens,
        str(finish) if isinstance(finish, str) and finish else "stop",
        tool_calls=list(calls) if isinstance(calls, list) else None,
    )


def complete(provider: str, request: ChatRequest, registry: Registry, slot: str) -> ChatResponse:
    """Dispatch to a provider. Whatever goes wrong inside a provider comes out as a CompozyNbError
    (PROVIDER_ERROR for anything unexpected), never a raw exception.

    Raises:
        ConfigError: unknown provider, missing key, malformed ``base_url``.
        ProviderError: the call failed (``PROVIDER_ERROR``, ``PROVIDER_TIMEOUT``, ``PROVIDER_AUTH_ERROR``).
    """
    _known(provider)
    try:
        if provider == "scripted":
            return call_scripted(request, registry, slot)
        if provider == "python":
            return call_python(request, registry)
        return call_openai(request)
    except CompozyNbError:
        raise
    except Exception as exc:
        raise _unexpected(provider, exc) from exc


async def acomplete(provider: str, request: ChatRequest, registry: Registry, slot: str) -> ChatResponse:
    """:func:`complete` on the event loop (``openai`` over ``httpx.AsyncClient``; ``python`` awaited, or in a
    worker thread for a plain function; ``scripted`` inline). Same errors."""
    _known(provider)
    try:
        if provider == "scripted":
            return call_scripted(request, registry, slot)
        if provider == "python":
            return await acall_python(request, registry)
        return await acall_openai(request)
    except CompozyNbError:
        raise
    except Exception as exc:
        raise _unexpected(provider, exc) from exc


def _known(provider: str) -> None:
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider '{provider}'", field="provider")


def _unexpected(provider: str, exc: Exception) -> ProviderError:
    return ProviderError(f"{provider}: unexpected {type(exc).__name__}: {excerpt(str(exc))}", provider=provider)
