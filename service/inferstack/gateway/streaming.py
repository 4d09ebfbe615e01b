"""SSE relay: engine bytes go to the client event by event, as they come.

Nothing is re-serialised and nothing is held back except the engine's usage-only tail chunk,
which is dropped when the client did not ask for it (the gateway asked for it on its own
behalf so that every stream is accounted). The gateway sends nothing of its own before the
engine's first event: the caller reads that event first, so a backend that fails before it
can still be retried elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from inferstack.gateway import metrics
from inferstack.gateway.context import RequestContext
from inferstack.gateway.disconnect import DisconnectGuard
from inferstack.gateway.errors import error_body
from inferstack.gateway.upstream import MAX_EVENT_BYTES, UPSTREAM_FAILURES

log = logging.getLogger("inferstack.gateway")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]"
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')


def is_usage_only(event: bytes) -> bool:
    return any(marker in event for marker in _EMPTY_CHOICES)


def usage_of(event: bytes) -> dict[str, int] | None:
    """The ``usage`` object of a ``data: {...}`` event, if it has one."""
    try:
        payload = orjson.loads(event.partition(b"data:")[2])
    except orjson.JSONDecodeError:
        return None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return usage if isinstance(usage, dict) else None


class EventTracker:
    """Decides what of each engine event reaches the client, and times the stream."""

    __slots__ = ("_itl", "_last", "_ttft", "ctx", "done", "forward_usage", "usage")

    def __init__(self, ctx: RequestContext, forward_usage: bool) -> None:
        self.ctx = ctx
        self.forward_usage = forward_usage
        self.usage: dict[str, int] | None = None
        self.done = False
        self._last = 0.0
        self._ttft = metrics.TTFT.labels(ctx.model)
        self._itl = metrics.HistogramBatch(metrics.ITL.labels(ctx.model))

    def feed(self, event: bytes) -> bytes | None:
        if event.startswith(_DONE):
            self.done = True
            return event
        if is_usage_only(event):
            self.usage = usage_of(event)
            return event if self.forward_usage else None
        now = time.perf_counter()
        if self._last:
            self._itl.observe(now - self._last)
        else:
            self._ttft.observe(now - self.ctx.start)
        self._last = now
        return event

    def finish(self) -> None:
        """Write the stream's batched inter-token timings to the metrics."""
        self._itl.flush()


class StreamRelay(Response):
    """ASGI response relaying an open engine stream whose first event is already read."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        first_event: bytes,
        tracker: EventTracker,
        on_close: Callable[[EventTracker], None],
    ) -> None:
        # Deliberately not Response.__init__: there is no body to render up front.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)
        self._resp = resp
        self._first = first_event
        self._tracker = tracker
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracker, resp, ctx = self._tracker, self._resp, self._tracker.ctx
        guard = DisconnectGuard(receive)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            event = self._first
            while event:
                out = tracker.feed(event)
                if out is not None:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if tracker.done:
                    break
                event = await resp.content.readuntil(b"\n\n", max_size=MAX_EVENT_BYTES)
            if not tracker.done:
                raise aiohttp.ClientPayloadError("engine stream ended without [DONE]")
            guard.stop()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            ctx.client_gone = True
        except UPSTREAM_FAILURES as exc:
            guard.stop()
            await self._fail_in_band(send, exc)
        except OSError:
            ctx.client_gone = True  # the client's socket failed under a send (ASGI 2.4 servers)
        finally:
            guard.stop()
            if tracker.done:
                resp.release()
            else:
                resp.close()  # closing the connection makes the engine abort the request
            tracker.finish()
            self._on_close(tracker)

    async def _fail_in_band(self, send: Send, exc: BaseException) -> None:
        """Headers are gone: report the broken stream as an SSE error event, then end."""
        kind = "timeout" if isinstance(exc, TimeoutError) else "disconnect"
        metrics.UPSTREAM_ERRORS.labels(self._tracker.ctx.backend, kind).inc()
        log.warning("engine stream broke mid-answer: %s", exc)
        body = error_body(
            "The engine stopped in the middle of the answer.",
            "upstream_error",
            None,
            "upstream_stream_broken",
        )
        try:
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + body + b"\n\n",
                    "more_body": True,
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self._tracker.ctx.client_gone = True
