"""ASGI middleware that accounts every request: request id, metrics, access log.

It wraps the whole exchange, streams included, so durations end at the last byte.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferstack.gateway import metrics
from inferstack.gateway.context import RequestContext, route_label
from inferstack.gateway.proxy import CLIENT_CLOSED
from inferstack.logs import REQUEST_ID

access_log = logging.getLogger("inferstack.access")

_MAX_REQUEST_ID = 128


def _request_id(scope: Scope) -> str:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            rid = value.decode("latin-1").strip()
            if 0 < len(rid) <= _MAX_REQUEST_ID and rid.isprintable():
                return rid
            break
    return uuid.uuid4().hex


class AccountingMiddleware:
    def __init__(self, app: ASGIApp, access_log_enabled: bool = True) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(request_id=_request_id(scope), route=route_label(scope["path"]))
        scope.setdefault("state", {})["ctx"] = ctx
        token = REQUEST_ID.set(ctx.request_id)
        rid_header = (b"x-request-id", ctx.request_id.encode("latin-1"))
        in_flight = metrics.IN_FLIGHT.labels(ctx.route)
        in_flight.inc()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            in_flight.dec()
            self._account(ctx)
            REQUEST_ID.reset(token)

    def _account(self, ctx: RequestContext) -> None:
        duration = time.perf_counter() - ctx.start
        status = CLIENT_CLOSED if ctx.client_gone else (ctx.status or 500)
        metrics.REQUESTS.labels(ctx.route, str(status), ctx.model, ctx.key_id).inc()
        if ctx.model:
            metrics.REQUEST_DURATION.labels(ctx.route, ctx.model).observe(duration)
            if ctx.prompt_tokens:
                metrics.PROMPT_TOKENS.labels(ctx.model, ctx.key_id).inc(ctx.prompt_tokens)
            if ctx.completion_tokens:
                metrics.COMPLETION_TOKENS.labels(ctx.model, ctx.key_id).inc(
                    ctx.completion_tokens)
        if self.access_log_enabled and ctx.route not in ("/metrics", "/health", "/ready"):
            access_log.info(
                "request", extra={
                    "route": ctx.route, "status": status, "duration_ms": round(duration * 1000, 2),
                    "key_id": ctx.key_id, "model": ctx.model, "backend": ctx.backend,
                    "stream": ctx.stream, "prompt_tokens": ctx.prompt_tokens,
                    "completion_tokens": ctx.completion_tokens, "retries": ctx.retries,
                })
