"""The Gunicorn worker class: Uvicorn on uvloop + httptools, no access log of its own."""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker


class GatewayWorker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (read by the base class)
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,  # the gateway writes its own JSON access log with key ids
        "server_header": False,
    }
