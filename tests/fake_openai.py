"""A small OpenAI-compatible chat-completions server for tests: real HTTP on loopback, in a thread.

Each request is recorded (path, headers, JSON body). Replies come from a queue of scripted responses;
when the queue is empty the server answers 200 with a default completion. Hostile replies for the edge
tests: a raw (non-JSON) body, a body dripped one byte at a time, a huge chunked body, a body cut short, a
connection closed before any answer, an error that echoes the request's ``Authorization`` header. The
server counts the bytes it managed to send (``sent``), so a test can see that a client stopped reading.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast


@dataclass
class Reply:
    """One scripted HTTP response.

    Attributes:
        block: wait until the server is stopped, never answering.
        raw: the body as bytes (instead of ``body`` as JSON).
        drip: seconds between two bytes of the body (a slow drip; Content-Length is sent up front).
        chunked: a chunked body of this many bytes (``x`` repeated), no Content-Length.
        cut: close the connection after this many body bytes (Content-Length announces the whole body).
        hang_up: close the connection right after reading the request, without any answer.
        echo_auth: answer with an error whose message repeats the request's Authorization header.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    block: bool = False
    raw: bytes | None = None
    drip: float = 0.0
    chunked: int = 0
    cut: int | None = None
    hang_up: bool = False
    echo_auth: bool = False


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def completion(
    content: str = "Hello from the fake server",
    *,
    model: str = "fake-model",
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A chat-completions reply body."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FakeOpenAI:
    """Start with ``with FakeOpenAI() as server:``; ``server.base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: deque[Reply] = deque()
        self.release = threading.Event()
        self.sent: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL of this server."""
        host, port = cast(tuple[str, int], self._server.server_address[:2])
        return f"http://{host}:{port}/v1"

    def queue(self, *replies: Reply) -> None:
        """Responses for the next requests, in order."""
        with self._lock:
            self.replies.extend(replies)

    def wait_sent(self, count: int = 1, timeout: float = 30.0) -> list[int]:
        """The byte counts of the replies sent so far, once ``count`` replies ended (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.sent) >= count:
                    return list(self.sent)
            time.sleep(0.02)
        with self._lock:
            return list(self.sent)

    def _next(self) -> Reply:
        with self._lock:
            return self.replies.popleft() if self.replies else Reply(200, completion())

    def _record(self, item: Recorded) -> None:
        with self._lock:
            self.requests.append(item)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake._record(Recorded("POST", self.path, headers, body))
                reply = fake._next()
                if reply.block:
                    fake.release.wait(30)
                    return
                if reply.hang_up:
                    self.close_connection = True
                    return
                try:
                    self._answer(reply, headers)
                except OSError:  # the client stopped reading (closed the connection)
                    self.close_connection = True

            def _answer(self, reply: Reply, request_headers: dict[str, str]) -> None:
                if reply.echo_auth:
                    message = f"bad request, you sent: Authorization: {request_headers.get('authorization', '')}"
                    data = json.dumps({"error": {"message": message}}).encode()
                elif reply.raw is not None:
                    data = reply.raw
                else:
                    data = json.dumps(reply.body if reply.body is not None else {}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.chunked:
                    self._send_chunked(reply.chunked)
                elif reply.drip:
                    self._send_drip(data, reply.drip)
                else:
                    body = data if reply.cut is None else data[: reply.cut]
                    self.wfile.write(body)
                    self._count(len(body))
                    if reply.cut is not None:
                        self.close_connection = True

            def _send_chunked(self, total: int) -> None:
                block = b"x" * 65536
                sent = 0
                try:
                    while sent < total:
                        piece = block[: min(len(block), total - sent)]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        sent += len(piece)
                    self.wfile.write(b"0\r\n\r\n")
                finally:
                    self._count(sent)

            def _send_drip(self, data: bytes, every: float) -> None:
                sent = 0
                try:
                    for index in range(len(data)):
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                        sent += 1
                        if fake.release.wait(every):
                            return
                finally:
                    self._count(sent)

            def _count(self, sent: int) -> None:
                with fake._lock:
                    fake.sent.append(sent)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
