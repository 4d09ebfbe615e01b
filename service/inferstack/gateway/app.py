"""The gateway ASGI application (one per Gunicorn worker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from inferstack import __version__, logs
from inferstack.gateway.asgi import GatewayASGI
from inferstack.gateway.errors import install_handlers
from inferstack.gateway.routes import DIRECT_ROUTES, request_schemas, router
from inferstack.gateway.service import Gateway
from inferstack.gateway.settings import GatewaySettings


def _add_request_schemas(app: FastAPI) -> None:
    """Put the request models in the OpenAPI document (routes validate bodies themselves)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(request_schemas())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: GatewaySettings | None = None) -> GatewayASGI:
    """Build the app; settings come from ``INFERSTACK_*`` and ``INFERSTACK_CONFIG`` if omitted."""
    settings = settings or GatewaySettings()
    logs.setup(settings.log_level)
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="inferstack gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_handlers(app)
    app.include_router(router)
    _add_request_schemas(app)
    entry = GatewayASGI(app, {"gateway": gateway}, DIRECT_ROUTES, settings.access_log)
    gateway.gauge_publishers.append(entry.publish_gauges)
    return entry
