"""The HTTP API (``compozy-nb serve``): FastAPI over the same engine as the CLI and the magics.

This module imports without FastAPI installed; :func:`create_app` and :func:`serve_main` import it when
called (``pip install 'compozy-nb[server]'``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from compozy_nb.project import Project

SERVER_EXTRA_MESSAGE = "the HTTP API needs the server extra: pip install 'compozy-nb[server]'"
API_KEY_ENV = "COMPOZY_API_KEY"

__all__ = ["API_KEY_ENV", "SERVER_EXTRA_MESSAGE", "check_bind", "create_app", "is_loopback", "serve_main"]


def create_app(project: Project, api_key: str | None = None, **options: Any) -> FastAPI:
    """The FastAPI app of ``project`` (see :func:`compozy_nb.server.app.create_app`)."""
    from compozy_nb.server.app import create_app as _create_app

    return _create_app(project, api_key, **options)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine.

    ``0.0.0.0`` and ``::`` (every interface) are not loopback; a name counts as loopback only when every
    address it resolves to is one; a name that does not resolve is not.
    """
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%", 1)[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_bind(host: str, api_key: str | None) -> str | None:
    """Why serving on ``host`` is refused (a non-loopback address without an API key), or None."""
    if api_key or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host!r} without authentication: it is not a loopback address. Set "
        f"{API_KEY_ENV}=<token> (clients then send 'Authorization: Bearer <token>') or bind to 127.0.0.1"
    )


def serve_main(
    project_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    redis_url: str | None = None,
    *,
    log_level: str = "info",
    access_log: bool = True,
    body_timeout: float | None = None,
) -> int:
    """Load the project in ``project_dir`` and serve it with uvicorn until interrupted.

    The API key comes from ``COMPOZY_API_KEY``; without one, only loopback ``Host`` names, ``host`` and the
    names in ``COMPOZY_ALLOWED_HOSTS`` are served. ``body_timeout`` (seconds, default 30) closes connections
    whose request headers, or whose body, do not arrive in time. Returns the exit status: 1 (with a message on
    stderr) when FastAPI/uvicorn are missing, the bind is refused, the project is invalid or Redis cannot be
    reached.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(f"error: {SERVER_EXTRA_MESSAGE}", file=sys.stderr)
        return 1
    from compozy_nb.errors import CompozyNbError
    from compozy_nb.project import Project
    from compozy_nb.server.guards import DEFAULT_BODY_TIMEOUT, allowed_hosts_from_env
    from compozy_nb.server.protocol import protocol_with_header_timeout

    api_key = os.environ.get(API_KEY_ENV, "")
    refused = check_bind(host, api_key)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    try:
        project = Project.load(project_dir, redis_url=redis_url)
        backend = project.backend  # an explicit URL that cannot be reached fails here, not at the 1st request
    except CompozyNbError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    timeout = DEFAULT_BODY_TIMEOUT if body_timeout is None else body_timeout
    app = create_app(project, api_key, allowed_hosts=[*allowed_hosts_from_env(), host], body_timeout=timeout)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"compozy-nb: serving project '{project.name}' ({len(project.resources)} memory resource(s), "
        f"{len(project.workflows)} workflow(s)) on http://{shown}:{port} - backend {backend.display_url}, "
        f"auth {'on' if api_key else 'off'}, docs at /docs",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            http=protocol_with_header_timeout(timeout),
        )
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        return exc.code if isinstance(exc.code, int) else 1
    return 0
