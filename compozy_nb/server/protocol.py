"""uvicorn's HTTP protocol with a timeout on request headers (imported by ``serve_main`` only: needs uvicorn).

uvicorn closes idle keep-alive connections, but a client that connects and then sends nothing, or only part of
its headers, holds the connection forever. :func:`protocol_with_header_timeout` returns uvicorn's own protocol
class (httptools or h11, as uvicorn would pick) that closes such a connection after ``timeout`` seconds. Bodies
are bounded by :class:`compozy_nb.server.guards.RequestGuard`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["protocol_with_header_timeout"]


def protocol_with_header_timeout(timeout: float) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol closing connections whose request headers do not arrive within
    ``timeout`` seconds of connecting (or of the previous response)."""

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout, self._close_when_waiting_for_headers)

        def _close_when_waiting_for_headers(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
