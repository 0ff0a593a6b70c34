"""``python -m api [--host H] [--port P] [--workers N]``: the API server (uvicorn), its log
JSON lines from the first one (uvicorn's own logging setup, which prints plain text
before the app starts, is not used; its access log neither: the API writes its own
``loramill.access`` lines)."""

from __future__ import annotations

import argparse

import uvicorn

from core.kit import logs
from core.kit.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default=settings.api_host,
                        help="address to listen on (default: LORAMILL_API_HOST)")
    parser.add_argument("--port", type=int, default=settings.api_port,
                        help="port (default: LORAMILL_API_PORT)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (they share PROMETHEUS_MULTIPROC_DIR)")
    args = parser.parse_args(argv)
    logs.configure()
    uvicorn.run("api.app:app", host=args.host, port=args.port, workers=args.workers,
                log_config=None, access_log=False, proxy_headers=True)


if __name__ == "__main__":
    main()
