"""``python -m compozy_nb.server``: the same as ``compozy-nb serve``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from compozy_nb.server import serve_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m compozy_nb.server", description="Serve a compozy-nb project over HTTP."
    )
    parser.add_argument("--project", default=".", help="project directory (default: .)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--redis", default=None, help="backend URL (default: COMPOZY_REDIS_URL, compozy.yaml)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    parser.add_argument(
        "--body-timeout", type=float, default=None, help="seconds allowed to send a request body (default: 30)"
    )
    args = parser.parse_args(argv)
    return serve_main(
        args.project,
        args.host,
        args.port,
        args.redis,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        body_timeout=args.body_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
