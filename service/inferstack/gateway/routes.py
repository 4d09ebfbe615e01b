"""HTTP routes: thin functions that authenticate, validate and hand over to the proxy."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.responses import Response

from inferstack.gateway import metrics
from inferstack.gateway.context import RequestContext
from inferstack.gateway.errors import APIError
from inferstack.gateway.limits import check_limits, read_body
from inferstack.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferstack.gateway.service import Gateway

router = APIRouter()

_JSON = "application/json"


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.state.gateway
    return gw


def _ctx(request: Request) -> RequestContext:
    ctx: RequestContext = request.state.ctx
    return ctx


_REF = "#/components/schemas/{model}"


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    """OpenAPI for a body the route validates itself (from raw bytes, not by FastAPI)."""
    schema = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": schema}}}}


def request_schemas() -> dict[str, Any]:
    """``components.schemas`` entries for the request models and everything they use."""
    models: list[type[BaseModel]] = [ChatCompletionRequest, CompletionRequest, EmbeddingRequest]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return dict(top.get("$defs", {}))


async def _proxied(
    request: Request,
    model: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest],
    path: str,
) -> Response:
    gw, ctx = _gateway(request), _ctx(request)
    ctx.key_id = gw.keys.authenticate(request.headers.get("authorization"))
    body = await read_body(request, gw.settings.max_body_bytes)
    req = model.model_validate_json(body)
    check_limits(req, gw.settings)
    gw.proxy.check_model(req.model)
    ctx.model = req.model
    if gw.cache is not None:
        return await gw.cache.serve(request, ctx, req, path, body, gw.proxy.forward)
    return await gw.proxy.forward(request, ctx, req, path, body)


@router.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _proxied(request, ChatCompletionRequest, "/v1/chat/completions")


@router.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _proxied(request, CompletionRequest, "/v1/completions")


@router.post("/v1/embeddings", openapi_extra=_body_schema(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    return await _proxied(request, EmbeddingRequest, "/v1/embeddings")


@router.get("/v1/models")
async def models(request: Request) -> Response:
    gw, ctx = _gateway(request), _ctx(request)
    ctx.key_id = gw.keys.authenticate(request.headers.get("authorization"))
    return Response(orjson.dumps({"object": "list", "data": gw.pool.models()}), media_type=_JSON)


@router.get("/health")
async def health() -> Response:
    """The process is alive (for systemd/load balancers that restart dead processes)."""
    return Response(b'{"status":"ok"}', media_type=_JSON)


@router.get("/ready")
async def ready(request: Request) -> Response:
    """A healthy backend serves the configured model now (for routing traffic here)."""
    gw = _gateway(request)
    model = gw.settings.model
    if not gw.pool.ready(model):
        what = f"model '{model}'" if model else "any model"
        raise APIError(
            503,
            f"Not ready: no healthy backend serves {what}.",
            code="not_ready",
            headers={"Retry-After": str(gw.settings.retry_after_s)},
        )
    healthy = sum(1 for b in gw.pool.backends if b.healthy)
    return Response(b'{"status":"ready","healthy_backends":%d}' % healthy, media_type=_JSON)


# Called directly by the ASGI entry point, skipping FastAPI's layers (see asgi.py).
DIRECT_ROUTES = {
    "/v1/chat/completions": chat_completions,
    "/v1/completions": completions,
    "/v1/embeddings": embeddings,
}


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    _gateway(request).publish_gauges()
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)
