"""The gateway's parts wired together for one worker process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from inferstack.gateway.auth import KeyStore
from inferstack.gateway.backends import BackendPool
from inferstack.gateway.proxy import Proxy
from inferstack.gateway.settings import GatewaySettings
from inferstack.gateway.upstream import Upstream

log = logging.getLogger("inferstack.gateway")


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.api_keys, settings.auth_enabled)
        self.pool = BackendPool(settings)
        self.upstream = Upstream(settings)
        self.proxy = Proxy(settings, self.pool, self.upstream)
        self._prober: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.upstream.start()
        await self.upstream.probe_all(self.pool)  # serve the first request with a known pool
        healthy = sum(b.healthy for b in self.pool.backends)
        log.info("gateway worker ready: %d/%d backends healthy", healthy, len(self.pool.backends))
        self._prober = asyncio.create_task(self.upstream.probe_forever(self.pool))

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.upstream.close()
