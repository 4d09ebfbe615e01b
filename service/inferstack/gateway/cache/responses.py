"""The response cache in the request path: lookup, single-flight, store, replay.

Called by the generation routes instead of ``Proxy.forward`` when a cache backend is
configured (with ``cache_backend: off`` nothing of this module runs). Every answer gets
``X-Cache``: ``HIT`` (from the cache, or from a concurrent identical request's upstream call),
``MISS`` (looked up, answered by an engine) or ``BYPASS`` (not looked up: the request is
not deterministic, or the client sent ``Cache-Control: no-cache``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from inferstack.gateway import metrics
from inferstack.gateway.cache.entry import Entry, json_entry, sse_entry
from inferstack.gateway.cache.keys import (
    CachedRequest,
    CacheKey,
    cache_key,
    client_controls,
    is_deterministic,
)
from inferstack.gateway.cache.replay import SSEReplay, json_response
from inferstack.gateway.cache.singleflight import Flight, Flights, wait_local, wait_remote
from inferstack.gateway.cache.store import CacheStore
from inferstack.gateway.context import RequestContext
from inferstack.gateway.disconnect import DisconnectGuard
from inferstack.gateway.errors import APIError
from inferstack.gateway.protocol import EmbeddingRequest
from inferstack.gateway.proxy import CLIENT_CLOSED
from inferstack.gateway.settings import GatewaySettings
from inferstack.gateway.streaming import EventTracker, StreamRelay

log = logging.getLogger("inferstack.gateway.cache")

Forward = Callable[..., Awaitable[Response | StreamRelay]]

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
_HEADERS = {v: (b"x-cache", v.encode()) for v in (HIT, MISS, BYPASS)}


class _ClientGone(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Call:
    """One client request on its way through the cache, and how to send it upstream."""

    request: Request
    ctx: RequestContext
    req: CachedRequest
    path: str
    body: bytes
    forward: Forward

    @property
    def stream(self) -> bool:
        return bool(getattr(self.req, "stream", False))


class _Outcome:
    """What becomes of one upstream answer: stored or not, and who is told.

    :meth:`settle` runs exactly once per upstream call, when its answer is complete (or has
    failed): in-process waiters get the entry at once, then the entry is stored, then the
    flight is closed and the lock released, in that order, so that a request arriving
    meanwhile finds the entry either in the flight or in the store.
    """

    __slots__ = ("cache", "flight", "key", "lock_token", "settled", "store_it")

    def __init__(
        self,
        cache: ResponseCache,
        key: CacheKey,
        store_it: bool,
        flight: Flight | None = None,
        lock_token: str | None = None,
    ) -> None:
        self.cache = cache
        self.key = key
        self.store_it = store_it
        self.flight = flight
        self.lock_token = lock_token
        self.settled = False

    def settle(self, entry: Entry | None) -> Awaitable[None] | None:
        """Tell the waiters; return the remaining work (storing, unlocking) or None."""
        if self.settled:
            return None
        self.settled = True
        if entry is not None and entry.size() > self.cache.max_entry_bytes:
            entry = None
        if self.flight is not None and not self.flight.future.done():
            self.flight.future.set_result(entry)
        if entry is None or not self.store_it:
            self._close_flight()
            if self.lock_token is None:
                return None
            entry = None
        return self._persist(entry)

    def settle_later(self, entry: Entry | None) -> None:
        """:meth:`settle` from synchronous code (the stream relay's end)."""
        work = self.settle(entry)
        if work is not None:
            self.cache.spawn(work)

    def _close_flight(self) -> None:
        if self.flight is not None:
            self.cache.flights.land(self.key.entry, self.flight, None)

    async def _persist(self, entry: Entry | None) -> None:
        try:
            if entry is not None:
                await self.cache.store.set(self.key.entry, entry)
        finally:
            self._close_flight()
            if self.lock_token is not None:
                await self.cache.store.release(self.key.lock, self.lock_token)


class RecordingTracker(EventTracker):
    """The live relay's tracker, also keeping every engine event for the cache."""

    __slots__ = ("_events", "_limit", "_outcome", "_size")

    def __init__(
        self, ctx: RequestContext, forward_usage: bool, outcome: _Outcome, limit: int
    ) -> None:
        super().__init__(ctx, forward_usage)
        self._outcome = outcome
        self._limit = limit
        self._events: list[bytes] | None = []
        self._size = 0

    def feed(self, event: bytes) -> bytes | None:
        if self._events is not None:
            self._size += len(event)
            if self._size > self._limit:
                self._events = None  # too large to keep: stop holding it in memory
            else:
                self._events.append(event)
        return super().feed(event)

    def finish(self) -> None:
        super().finish()
        complete = self.done and not self.ctx.client_gone and self._events is not None
        self._outcome.settle_later(sse_entry(self._events or []) if complete else None)


class ResponseCache:
    def __init__(self, settings: GatewaySettings) -> None:
        self.store = CacheStore(settings)
        self.flights = Flights(settings.cache_lock_timeout_s)
        self.namespace = settings.cache_namespace
        self.lock_timeout_s = settings.cache_lock_timeout_s
        self.max_entry_bytes = settings.cache_max_entry_bytes
        self._results = {r: metrics.CACHE_REQUESTS.labels(r.lower()) for r in _HEADERS}
        self._joins = metrics.CACHE_SINGLEFLIGHT_JOINS
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.store.distributed and not await self.store.ping():
            log.warning("response cache: Redis does not answer; passing requests through")

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(1.0, self.store.timeout_s * 4))
        await self.store.close()

    def spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- the request path -----
    async def serve(
        self,
        request: Request,
        ctx: RequestContext,
        req: CachedRequest,
        path: str,
        body: bytes,
        forward: Forward,
    ) -> Response:
        call = _Call(request, ctx, req, path, body, forward)
        controls = client_controls(request.headers.get("cache-control"))
        if not is_deterministic(req) or not (controls.lookup or controls.store):
            return await self._upstream(call, BYPASS, None)
        key = cache_key(req, ctx.route, ctx.key_id, self.namespace)
        if not controls.lookup:  # no-cache: refresh the entry from the engine
            return await self._upstream(call, BYPASS, _Outcome(self, key, store_it=True))
        try:
            # A flight in this worker answers without asking the store at all.
            if (flight := self.flights.join(key.entry)) is not None:
                return await self._join(call, key, flight)
            if not controls.store:  # no-store: look up, but keep nothing and lead nothing
                entry = await self.store.get(key.entry)
                if entry is not None and (hit := self._answer(call, entry)) is not None:
                    return hit
                return await self._upstream(call, MISS, None)
            return await self._lead(call, key)
        except _ClientGone:
            ctx.client_gone = True
            metrics.CLIENT_DISCONNECTS.labels(ctx.route).inc()
            return Response(status_code=CLIENT_CLOSED)

    async def _lead(self, call: _Call, key: CacheKey) -> Response:
        """Lead this worker's flight for ``key``: look the entry up, else take the Redis lock
        (or wait for whoever holds it), else call the engine. Identical requests arriving
        meanwhile in this worker join the flight and cost no store operation."""
        flight = self.flights.lead(key.entry)
        outcome = _Outcome(self, key, store_it=True, flight=flight)
        try:
            entry = await self.store.get(key.entry)
            if entry is not None and (hit := self._answer(call, entry)) is not None:
                outcome.store_it = False  # it is stored already
                outcome.settle(entry)  # this worker's joiners get it too
                return hit
            if self.store.distributed:
                token = uuid.uuid4().hex
                got = await self.store.acquire(key.lock, token, self.lock_timeout_s)
                if got:
                    outcome.lock_token = token
                elif got is False:  # another worker or host is fetching this answer
                    self._joins.inc()
                    entry = await self._guarded(
                        call.request, wait_remote(self.store, key, self.lock_timeout_s)
                    )
                    if entry is not None and (hit := self._answer(call, entry)) is not None:
                        outcome.store_it = False
                        outcome.settle(entry)
                        return hit
        except BaseException:
            outcome.settle_later(None)
            raise
        return await self._upstream(call, MISS, outcome)

    async def _join(self, call: _Call, key: CacheKey, flight: Flight) -> Response:
        """Wait for this worker's leader; if it has nothing usable in time, our own call."""
        self._joins.inc()
        entry = await self._guarded(call.request, wait_local(flight, self.lock_timeout_s))
        if entry is not None and (hit := self._answer(call, entry)) is not None:
            return hit
        outcome = _Outcome(self, key, store_it=True)
        return await self._upstream(call, MISS, outcome)

    async def _upstream(self, call: _Call, result: str, outcome: _Outcome | None) -> Response:
        """The engine's answer (via the proxy), tagged; kept when ``outcome`` says so."""
        self._results[result].inc()
        call.ctx.cache = result
        header = _HEADERS[result]
        kw: dict[str, Any] = {}
        if outcome is not None and call.stream:
            limit = self.max_entry_bytes
            kw["tracker"] = lambda c, usage: RecordingTracker(c, usage, outcome, limit)
        try:
            response = await call.forward(
                call.request, call.ctx, call.req, call.path, call.body, **kw
            )
        except APIError as exc:
            if outcome is not None:
                outcome.settle_later(None)
            exc.headers["X-Cache"] = result
            raise
        except BaseException:
            if outcome is not None:
                outcome.settle_later(None)
            raise
        response.raw_headers.append(header)
        if outcome is not None and not isinstance(response, StreamRelay):
            entry = None
            if response.status_code == 200 and not call.stream:
                entry = json_entry(bytes(response.body), isinstance(call.req, EmbeddingRequest))
            work = outcome.settle(entry)
            if work is not None:
                await work
        return response

    def _answer(self, call: _Call, entry: Entry) -> Response | None:
        """The client's answer from ``entry``, or None if the entry does not fit it."""
        if (entry.kind == "sse") != call.stream:
            return None
        self._results[HIT].inc()
        call.ctx.cache = HIT
        if not call.stream:
            return json_response(entry, _HEADERS[HIT])
        call.ctx.stream = True
        opts = getattr(call.req, "stream_options", None)
        return SSEReplay(entry, bool(opts and opts.include_usage), _HEADERS[HIT])

    async def _guarded(self, request: Request, wait: Awaitable[Entry | None]) -> Entry | None:
        """Wait, but stop waiting (and answer nothing) when the client goes away."""
        guard = DisconnectGuard(request.receive)
        try:
            return await wait
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            raise _ClientGone from None
        finally:
            guard.stop()
