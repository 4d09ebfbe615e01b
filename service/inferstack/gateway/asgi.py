"""The gateway's outermost ASGI callable: accounting for every request, a direct path for
the hot routes.

Every request gets a request id, in-flight and request metrics and one access-log line; the
wrapper sees the whole exchange, streams included, so durations end at the last byte.

The generation routes (``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``)
are called directly here; everything else goes through FastAPI. The handlers are the same
functions FastAPI registers (so the OpenAPI schema and behaviour are one), but the direct
path skips FastAPI's eight middleware and routing layers, which cost about half the
gateway's CPU per request (docs/benchmarks.md).
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferstack.gateway import lameduck, metrics
from inferstack.gateway.auth import ANONYMOUS
from inferstack.gateway.context import RequestContext, route_label
from inferstack.gateway.errors import response_for
from inferstack.gateway.proxy import CLIENT_CLOSED
from inferstack.logs import REQUEST_ID

access_log = logging.getLogger("inferstack.access")

Handler = Callable[[Request], Awaitable[Response]]

_MAX_REQUEST_ID = 128

# The authenticated key's id on every answer, for the edge's access log (nginx logs it and
# removes it from what the client gets); the key itself is never logged anywhere.
KEY_ID_HEADER = b"x-inferstack-key-id"


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


class GatewayASGI:
    def __init__(
        self,
        api: ASGIApp,
        state: dict[str, object],
        direct_routes: Mapping[str, Handler],
        access_log_enabled: bool = True,
    ) -> None:
        self.api = api
        self.state = state
        self.direct_routes = direct_routes
        self.access_log_enabled = access_log_enabled
        self._requests = metrics.ChildCache(metrics.REQUESTS)
        self._durations = metrics.ChildCache(metrics.REQUEST_DURATION)
        self._prompt = metrics.ChildCache(metrics.PROMPT_TOKENS)
        self._completion = metrics.ChildCache(metrics.COMPLETION_TOKENS)
        self.in_flight: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # lifespan
            return
        ctx = RequestContext(request_id=_request_id(scope), route=route_label(scope["path"]))
        state = scope.setdefault("state", {})
        state.update(self.state)
        state["ctx"] = ctx
        token = REQUEST_ID.set(ctx.request_id)
        rid_header = (b"x-request-id", ctx.request_id.encode("latin-1"))
        self.in_flight[ctx.route] += 1

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = [*message.get("headers", ()), rid_header]
                if ctx.key_id != ANONYMOUS:
                    headers.append((KEY_ID_HEADER, ctx.key_id.encode("latin-1")))
                if lameduck.state.active:
                    headers.append(lameduck.CONNECTION_CLOSE)
                message["headers"] = headers
            await send(message)

        try:
            handler = self.direct_routes.get(scope["path"]) if scope["method"] == "POST" else None
            if handler is None:
                await self.api(scope, receive, send_with_id)
            else:
                request = Request(scope, receive)
                try:
                    response = await handler(request)
                except Exception as exc:
                    response = response_for(exc, request)
                await response(scope, receive, send_with_id)
        finally:
            self.in_flight[ctx.route] -= 1
            self._account(ctx)
            REQUEST_ID.reset(token)

    def publish_gauges(self) -> None:
        """This worker's in-flight count per route into the (livesum) gauge. ``/metrics`` is
        left out: the scrape that makes a worker publish would count itself, and that 1 would
        stay in the merged value until the worker's next periodic publish."""
        for route, count in self.in_flight.items():
            if route != "/metrics":
                metrics.IN_FLIGHT.labels(route).set(count)

    def _account(self, ctx: RequestContext) -> None:
        duration = time.perf_counter() - ctx.start
        status = CLIENT_CLOSED if ctx.client_gone else (ctx.status or 500)
        self._requests.get(ctx.route, str(status), ctx.model, ctx.key_id).inc()
        if ctx.model:
            self._durations.get(ctx.route, ctx.model).observe(duration)
            if ctx.prompt_tokens:
                self._prompt.get(ctx.model, ctx.key_id).inc(ctx.prompt_tokens)
            if ctx.completion_tokens:
                self._completion.get(ctx.model, ctx.key_id).inc(ctx.completion_tokens)
        if self.access_log_enabled and ctx.route not in ("/metrics", "/health", "/ready"):
            access_log.info(
                "request",
                extra={
                    "route": ctx.route,
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "key_id": ctx.key_id,
                    "model": ctx.model,
                    "backend": ctx.backend,
                    "stream": ctx.stream,
                    "prompt_tokens": ctx.prompt_tokens,
                    "completion_tokens": ctx.completion_tokens,
                    "retries": ctx.retries,
                    "cache": ctx.cache,
                },
            )
