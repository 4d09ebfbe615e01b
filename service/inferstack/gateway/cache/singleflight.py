"""Single-flight: concurrent identical requests make one upstream call.

In one worker, the first request for a key becomes the *leader* and later ones *join* its
flight: they wait on one future for the entry the leader produces. Across workers and
gateway hosts (Redis backend), each worker's leader first takes a lock in Redis
(``SET NX`` with a TTL of ``cache_lock_timeout_s``, through aiocache's ``add``); a leader that
finds the lock taken waits for the other worker's entry by polling for it.

Every wait is bounded by ``cache_lock_timeout_s``. A waiter whose leader produced nothing it
may use (an error, a truncated or non-cacheable answer, a client that left) or that waited
too long makes its own upstream call. A lock whose holder died expires with its TTL.
"""

from __future__ import annotations

import asyncio
import time

from inferstack.gateway.cache.entry import Entry
from inferstack.gateway.cache.keys import CacheKey
from inferstack.gateway.cache.store import CacheStore

_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.1


class Flight:
    __slots__ = ("future", "started")

    def __init__(self) -> None:
        self.future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.started = time.monotonic()


class Flights:
    """The flights in progress in this worker, by entry key."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str) -> Flight | None:
        """The live flight for ``key``, if there is one to wait on."""
        flight = self._flights.get(key)
        if flight is None:
            return None
        if flight.future.done():
            # Landed with an entry that is being stored right now: take it from here.
            return flight if flight.future.result() is not None else None
        if time.monotonic() - flight.started > self.max_age_s:
            return None  # its leader is stuck; waiting on it would only add latency
        return flight

    def lead(self, key: str) -> Flight:
        flight = self._flights[key] = Flight()
        return flight

    def land(self, key: str, flight: Flight, entry: Entry | None) -> None:
        """End ``flight``: its waiters get ``entry`` (None: make your own call)."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.future.done():
            flight.future.set_result(entry)


async def wait_local(flight: Flight, timeout_s: float) -> Entry | None:
    try:
        # shield: one waiter's timeout must not cancel the future the others wait on
        return await asyncio.wait_for(asyncio.shield(flight.future), timeout_s)
    except TimeoutError:
        return None


async def wait_remote(store: CacheStore, key: CacheKey, timeout_s: float) -> Entry | None:
    """Wait for the entry another worker or host is producing, while it holds the lock."""
    deadline = time.monotonic() + timeout_s
    delay = _POLL_FIRST_S
    while time.monotonic() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, _POLL_MAX_S)
        entry = await store.get(key.entry)
        if entry is not None:
            return entry
        held = await store.held(key.lock)
        if held is None:
            return None  # the cache is failing: stop waiting on it
        if not held:
            # The holder finished: it stored the entry just before releasing, or it had
            # nothing cacheable. One last look tells which.
            return await store.get(key.entry)
    return None
