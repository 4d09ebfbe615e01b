"""The cache backend (aiocache: memory or Redis) behind timeouts that never fail a request.

Every operation is bounded by ``cache_timeout_ms``. A failed or slow operation counts in
``inferstack_cache_errors_total{op}`` and answers "nothing there" / "not stored", so the
request goes on as if there were no cache. After a failure the store is skipped (each
skipped operation counted as an error too) for ``cache_retry_s``, so a Redis host that is
down or black-holed costs at most one timeout per interval, not one per request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from aiocache import SimpleMemoryCache
from aiocache.backends.redis import RedisCache
from aiocache.serializers import BaseSerializer
from redis.exceptions import ConnectionError as RedisConnectionError

from inferstack.gateway import metrics
from inferstack.gateway.cache.entry import Entry, EntryError
from inferstack.gateway.settings import GatewaySettings

log = logging.getLogger("inferstack.gateway.cache")


class EntrySerializer(BaseSerializer):  # type: ignore[misc]
    """Bytes in, bytes out: :class:`Entry`'s own format (no pickle, no JSON detour)."""

    DEFAULT_ENCODING = None

    def dumps(self, value: Entry) -> bytes:
        return value.dumps()

    def loads(self, value: bytes | None) -> Entry | None:
        return None if value is None else Entry.loads(value)


def _identity(value: Any) -> Any:
    return value


class BoundedMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache's memory backend with a total size cap, least recently used out first."""

    def __init__(self, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes
        self.total = 0
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()

    async def _get(self, key: str, encoding: str | None = None, _conn: Any = None) -> Any:
        value = self._cache.get(key)
        if value is not None and key in self._sizes:
            self._sizes.move_to_end(key)
        return value

    async def _set(
        self, key: str, value: Any, ttl: Any = None, _cas_token: Any = None, _conn: Any = None
    ) -> Any:
        done = await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        if isinstance(value, bytes | bytearray):
            self.total -= self._sizes.pop(key, 0)
            self._sizes[key] = len(value)
            self.total += len(value)
            # Entries that expired on their own are still counted here until they reach the
            # front; dropping them from the count costs nothing.
            while self.total > self.max_bytes and len(self._sizes) > 1:
                oldest, size = self._sizes.popitem(last=False)
                self.total -= size
                await self._delete(oldest)
        return done


def _redis_cache(settings: GatewaySettings, timeout_s: float) -> RedisCache:
    url = urlsplit(settings.cache_redis_url)
    db = (url.path or "/0").lstrip("/") or "0"
    password = settings.cache_redis_password or (unquote(url.password) if url.password else None)
    pool_kwargs: dict[str, Any] = {
        "socket_timeout": max(timeout_s, 0.05),
        "health_check_interval": 30,
    }
    if url.username:
        pool_kwargs["username"] = unquote(url.username)
    return RedisCache(
        serializer=EntrySerializer(),
        endpoint=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        db=int(db),
        password=password,
        ssl=url.scheme == "rediss",
        create_connection_timeout=max(timeout_s, 0.05),
        connection_pool_kwargs=pool_kwargs,
        timeout=timeout_s,
    )


class CacheStore:
    """get / set / lock on the configured backend; failures are counted, never raised."""

    TRIP_AFTER = 3

    def __init__(self, settings: GatewaySettings) -> None:
        self.timeout_s = settings.cache_timeout_ms / 1000
        self.ttl_s = settings.cache_ttl_s
        self.retry_s = settings.cache_retry_s
        self.distributed = settings.cache_backend == "redis"
        self.backend: Any
        if self.distributed:
            self.backend = _redis_cache(settings, self.timeout_s)
        else:
            self.backend = BoundedMemoryCache(
                settings.cache_memory_max_bytes, serializer=EntrySerializer(), timeout=None
            )
        self._down_until = 0.0
        self._failures = 0
        self._errors = {op: metrics.CACHE_ERRORS.labels(op) for op in ("get", "set", "lock")}
        self._stored_bytes = metrics.CACHE_STORED_BYTES

    def _available(self, op: str) -> bool:
        if self._down_until and time.monotonic() < self._down_until:
            self._errors[op].inc()
            return False
        return True

    def _failed(self, op: str, exc: BaseException) -> None:
        """Count a failure. The store is skipped for ``retry_s`` when it cannot be reached,
        or after ``TRIP_AFTER`` failures in a row (a single slow answer, e.g. an event loop
        busy with a burst of connections, does not switch the cache off)."""
        self._errors[op].inc()
        self._failures += 1
        unreachable = isinstance(exc, RedisConnectionError | OSError)
        if self.distributed and (unreachable or self._failures >= self.TRIP_AFTER):
            if not self._down_until or time.monotonic() >= self._down_until:
                log.warning(
                    "response cache unavailable (%s on %s): passing requests through for %.1f s",
                    type(exc).__name__ or "timeout",
                    op,
                    self.retry_s,
                )
            self._down_until = time.monotonic() + self.retry_s

    def _ok(self) -> None:
        self._down_until = 0.0
        self._failures = 0

    async def get(self, key: str) -> Entry | None:
        if not self._available("get"):
            return None
        try:
            entry: Entry | None = await self.backend.get(key)
        except Exception as exc:
            if isinstance(exc, EntryError):
                log.warning("dropping unreadable cache entry: %s", exc)
                self._errors["get"].inc()
                return None
            self._failed("get", exc)
            return None
        self._ok()
        return entry

    async def set(self, key: str, entry: Entry) -> bool:
        if not self._available("set"):
            return False
        try:
            await self.backend.set(key, entry, ttl=self.ttl_s)
        except Exception as exc:
            self._failed("set", exc)
            return False
        self._ok()
        self._stored_bytes.inc(entry.size())
        return True

    async def acquire(self, lock_key: str, token: str, ttl_s: float) -> bool | None:
        """True: this caller holds the lock; False: another does; None: unknown (failure)."""
        if not self._available("lock"):
            return None
        try:
            await self.backend.add(lock_key, token, ttl=float(ttl_s), dumps_fn=_identity)
        except ValueError:
            self._ok()
            return False
        except Exception as exc:
            self._failed("lock", exc)
            return None
        self._ok()
        return True

    async def held(self, lock_key: str) -> bool | None:
        if not self._available("lock"):
            return None
        try:
            held = bool(await self.backend.exists(lock_key))
        except Exception as exc:
            self._failed("lock", exc)
            return None
        self._ok()
        return held

    async def release(self, lock_key: str, token: str) -> None:
        """Delete the lock if it is still ours (it may have expired and been taken since)."""
        try:
            await asyncio.wait_for(
                self.backend._redlock_release(lock_key, token), self.timeout_s or None
            )
        except Exception as exc:
            self._failed("lock", exc)

    async def ping(self) -> bool:
        if not self.distributed:
            return True
        try:
            await asyncio.wait_for(self.backend.client.ping(), max(self.timeout_s, 1.0))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        try:
            if self.distributed:
                await self.backend.client.aclose()
            else:
                await self.backend.close()
        except Exception as exc:
            log.debug("closing the cache backend: %s", exc)
