"""The gateway's parts wired together for one worker process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from inferstack.gateway.auth import KeyStore
from inferstack.gateway.backends import BackendPool
from inferstack.gateway.cache.responses import ResponseCache
from inferstack.gateway.loadreport import LoadPoller
from inferstack.gateway.proxy import Proxy
from inferstack.gateway.settings import GatewaySettings
from inferstack.gateway.upstream import Upstream

log = logging.getLogger("inferstack.gateway")

GAUGE_INTERVAL_S = 0.5


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.api_keys, settings.auth_enabled)
        self.pool = BackendPool(settings)
        self.upstream = Upstream(settings)
        self.proxy = Proxy(settings, self.pool, self.upstream)
        self.cache = ResponseCache(settings) if settings.cache_backend != "off" else None
        self.gauge_publishers: list[Callable[[], None]] = [self.pool.publish_gauges]
        self._tasks: list[asyncio.Task[None]] = []

    def publish_gauges(self) -> None:
        """In-flight gauges are written from plain counters at this pace (and before every
        scrape this worker answers), not on every request: a multiprocess gauge update is
        a locked write to a memory-mapped file, too dear for the hot path."""
        for publish in self.gauge_publishers:
            publish()

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_INTERVAL_S)
            self.publish_gauges()

    async def start(self) -> None:
        await self.upstream.start()
        if self.cache is not None:
            await self.cache.start()
        await self.upstream.probe_all(self.pool)  # serve the first request with a known pool
        healthy = sum(b.healthy for b in self.pool.backends)
        log.info("gateway worker ready: %d/%d backends healthy", healthy, len(self.pool.backends))
        self._tasks = [
            asyncio.create_task(self.upstream.probe_forever(self.pool)),
            asyncio.create_task(self._publish_forever()),
        ]
        if self.settings.load_poll_interval_s > 0:
            poller = LoadPoller(self.pool, self.upstream, self.settings.load_poll_interval_s)
            self._tasks.append(asyncio.create_task(poller.run_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.cache is not None:
            await self.cache.stop()
        await self.upstream.close()
