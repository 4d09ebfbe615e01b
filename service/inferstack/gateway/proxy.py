"""Forwarding validated requests to engines: admission, retries, streaming hand-off.

A request is retried on another backend only while nothing has reached the client: on a
connection error, a 5xx answer, or a stream that breaks before its first event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response

from inferstack.gateway import metrics
from inferstack.gateway.backends import Backend, BackendPool, unknown_model_error
from inferstack.gateway.context import RequestContext
from inferstack.gateway.disconnect import DisconnectGuard
from inferstack.gateway.errors import APIError, unavailable
from inferstack.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferstack.gateway.settings import GatewaySettings
from inferstack.gateway.streaming import EventTracker, StreamRelay
from inferstack.gateway.upstream import (
    BROKEN_ERRORS,
    CONNECT_ERRORS,
    MAX_EVENT_BYTES,
    UPSTREAM_FAILURES,
    Upstream,
)

log = logging.getLogger("inferstack.gateway")

ProxiedRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
TrackerFactory = Callable[[RequestContext, bool], EventTracker]
CLIENT_CLOSED = 499  # nginx's status for "client closed the request"


class _Retry(Exception):
    """This backend failed before anything reached the client; try another."""

    def __init__(self, kind: str, fatal: bool, error: APIError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.fatal = fatal
        self.error = error


def with_usage_requested(body: bytes, req: ProxiedRequest) -> bytes:
    """The body with ``stream_options.include_usage`` set, touching the bytes minimally."""
    if "stream_options" not in req.model_fields_set:
        end = body.rstrip()
        # A validated object body ends with "}"; splice the field in before it.
        return end[:-1] + b',"stream_options":{"include_usage":true}}'
    payload = orjson.loads(body)
    opts = payload.get("stream_options") or {}
    opts["include_usage"] = True
    payload["stream_options"] = opts
    return orjson.dumps(payload)


def _timed_out(backend: Backend) -> APIError:
    metrics.UPSTREAM_ERRORS.labels(backend.label, "timeout").inc()
    return APIError(504, "The engine did not answer in time.", code="upstream_timeout")


def _bad_gateway(message: str) -> APIError:
    return APIError(502, message, code="upstream_error")


class Proxy:
    def __init__(self, settings: GatewaySettings, pool: BackendPool, upstream: Upstream) -> None:
        self.settings = settings
        self.pool = pool
        self.upstream = upstream

    def affinity_key(self, request: Request, req: ProxiedRequest) -> str | None:
        mode = self.settings.session_affinity
        if mode == "off":
            return None
        if mode in ("header", "header_or_user"):
            value = request.headers.get(self.settings.session_header)
            if value:
                return value
        if mode in ("user", "header_or_user"):
            return req.user
        return None

    def check_model(self, model: str) -> None:
        if self.pool.known_model(model):
            return
        if not self.pool.ready(None):
            raise unavailable(
                self.settings.retry_after_s, "No healthy backend is available right now."
            )
        raise unknown_model_error(model, self.pool)

    async def forward(
        self,
        request: Request,
        ctx: RequestContext,
        req: ProxiedRequest,
        path: str,
        body: bytes,
        tracker: TrackerFactory = EventTracker,
    ) -> Response | StreamRelay:
        """Send ``body`` to a backend and return what the client gets.

        ``tracker`` makes the stream relay's event tracker (the response cache passes one
        that also records the events)."""
        stream = bool(getattr(req, "stream", False))
        client_wants_usage = True
        if stream:
            opts = getattr(req, "stream_options", None)
            client_wants_usage = bool(opts and opts.include_usage)
            if not client_wants_usage:
                body = with_usage_requested(body, req)
        affinity = self.affinity_key(request, req)
        tried: list[Backend] = []
        guard = DisconnectGuard(request.receive)
        try:
            while True:
                backend = await self.pool.acquire(req.model, ctx.route, affinity, tried)
                ctx.backend = backend.label
                handed_off = False
                try:
                    if stream:
                        result = await self._open_stream(
                            backend, ctx, path, body, client_wants_usage, tracker
                        )
                        # A relay owns the backend slot from here and releases it at its end.
                        handed_off = isinstance(result, StreamRelay)
                        return result
                    return await self._call(backend, ctx, path, body)
                except _Retry as failure:
                    metrics.UPSTREAM_ERRORS.labels(backend.label, failure.kind).inc()
                    self.pool.record_failure(backend, fatal=failure.fatal)
                    tried.append(backend)
                    if len(tried) > self.settings.max_retries or not self.pool.has_candidates(
                        req.model, tried
                    ):
                        raise failure.error from None
                    ctx.retries += 1
                    metrics.RETRIES.labels(ctx.route).inc()
                    log.warning(
                        "retrying on another backend after %s from %s", failure.kind, backend.label
                    )
                finally:
                    if not handed_off:
                        self.pool.release(backend)
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            ctx.client_gone = True
            metrics.CLIENT_DISCONNECTS.labels(ctx.route).inc()
            return Response(status_code=CLIENT_CLOSED)
        finally:
            guard.stop()

    async def _post(
        self, backend: Backend, ctx: RequestContext, path: str, body: bytes
    ) -> aiohttp.ClientResponse:
        try:
            return await self.upstream.post(backend, path, body, ctx.request_id)
        except CONNECT_ERRORS as exc:
            # Nothing reached the engine: to the client this is "no capacity", retryable.
            log.warning("cannot reach %s: %s", backend.label, type(exc).__name__)
            raise _Retry(
                "connect",
                True,
                unavailable(
                    self.settings.retry_after_s,
                    f"No engine serving this model could be reached ({type(exc).__name__}).",
                ),
            ) from None
        except TimeoutError:
            raise _timed_out(backend) from None

    async def _read_answer(
        self,
        resp: aiohttp.ClientResponse,
        backend: Backend,
        read: Callable[[], Awaitable[bytes]],
        broken: str,
    ) -> bytes:
        """``read`` from an engine's answer. On any failure the connection is closed, which
        makes the engine abort the request; a broken connection may be retried elsewhere
        (nothing reached the client yet), a silent engine is a 504."""
        try:
            return await read()
        except TimeoutError:  # before the connection errors: aiohttp's timeout is one too
            resp.close()
            raise _timed_out(backend) from None
        except BROKEN_ERRORS:
            resp.close()
            raise _Retry("disconnect", True, _bad_gateway(broken)) from None
        except BaseException:
            resp.close()  # includes cancellation on client disconnect
            raise

    async def _read_error(self, backend: Backend, resp: aiohttp.ClientResponse) -> Response:
        """A non-200 answer: 5xx is retried elsewhere, 4xx is the engine's word to the client."""
        try:
            data = await resp.read()
        except UPSTREAM_FAILURES:
            data = b""
        finally:
            resp.release()
        if resp.status >= 500:
            raise _Retry(
                "status_5xx",
                False,
                _bad_gateway(f"The engine failed to answer (HTTP {resp.status})."),
            )
        self.pool.record_success(backend)
        return Response(data, status_code=resp.status, media_type="application/json")

    async def _call(
        self, backend: Backend, ctx: RequestContext, path: str, body: bytes
    ) -> Response:
        resp = await self._post(backend, ctx, path, body)
        if resp.status != 200:
            return await self._read_error(backend, resp)
        data = await self._read_answer(
            resp, backend, resp.read, "The engine connection broke before the answer was complete."
        )
        resp.release()
        self.pool.record_success(backend)
        _account_usage(ctx, data)
        return Response(data, status_code=200, media_type="application/json")

    async def _open_stream(
        self,
        backend: Backend,
        ctx: RequestContext,
        path: str,
        body: bytes,
        client_wants_usage: bool,
        tracker: TrackerFactory,
    ) -> Response | StreamRelay:
        resp = await self._post(backend, ctx, path, body)
        if resp.status != 200:
            return await self._read_error(backend, resp)
        closed = "The engine closed the stream before its first event."
        first = await self._read_answer(
            resp,
            backend,
            lambda: resp.content.readuntil(b"\n\n", max_size=MAX_EVENT_BYTES),
            closed,
        )
        if not first:
            resp.close()
            raise _Retry(
                "disconnect",
                True,
                _bad_gateway(closed),
            )
        self.pool.record_success(backend)
        ctx.stream = True

        def on_close(tracker: EventTracker) -> None:
            self.pool.release(backend)
            if tracker.usage:
                ctx.prompt_tokens = int(tracker.usage.get("prompt_tokens") or 0)
                ctx.completion_tokens = int(tracker.usage.get("completion_tokens") or 0)
            if ctx.client_gone:
                metrics.CLIENT_DISCONNECTS.labels(ctx.route).inc()

        return StreamRelay(resp, first, tracker(ctx, client_wants_usage), on_close)


def _account_usage(ctx: RequestContext, data: bytes) -> None:
    try:
        usage = orjson.loads(data).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(usage, dict):
        ctx.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        ctx.completion_tokens = int(usage.get("completion_tokens") or 0)
