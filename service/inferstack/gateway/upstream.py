"""HTTP to the engines: one pooled aiohttp session per worker, and the active health prober.

aiohttp was chosen over httpx for this hot path by measurement (``bench/http_clients.py``,
figures in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from inferstack.gateway import drain
from inferstack.gateway.backends import Backend, BackendPool
from inferstack.gateway.settings import GatewaySettings

log = logging.getLogger("inferstack.gateway")

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Largest single SSE event accepted from an engine (logprobs can make big ones)."""

# Connection-level failures: the engine is not there (or went away). Eject at once.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)
# Failures in the middle of an answer: the connection broke or the body is incomplete.
BROKEN_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientPayloadError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    ConnectionResetError,
)
UPSTREAM_FAILURES: tuple[type[BaseException], ...] = (*BROKEN_ERRORS, TimeoutError)


class Upstream:
    """Pooled HTTP/1.1 keep-alive connections to every backend."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/json"}
        if settings.backend_api_key:
            self._headers["Authorization"] = f"Bearer {settings.backend_api_key}"
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        self._probe_timeout = aiohttp.ClientTimeout(total=settings.health_timeout_s)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=60, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            read_bufsize=2**16,
            # The session's timeout serves every request: a per-request timeout object costs
            # 5-20 % more client CPU per request (measured).
            timeout=self.timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() not called"
        return self._session

    def headers(self, request_id: str) -> dict[str, str]:
        return {**self._headers, "X-Request-ID": request_id}

    async def post(
        self, backend: Backend, path: str, body: bytes, request_id: str
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller owns (and must close) the response."""
        return await self.session.post(
            backend.url + path, data=body, headers=self.headers(request_id)
        )

    # ----- active health -----
    async def probe(self, backend: Backend) -> tuple[bool, list[dict[str, object]] | None]:
        """``/health`` must answer 200; ``/v1/models`` refreshes the backend's catalogue."""
        try:
            async with self.session.get(
                backend.url + "/health", timeout=self._probe_timeout
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    return False, None
            async with self.session.get(
                backend.url + "/v1/models", headers=self._headers, timeout=self._probe_timeout
            ) as resp:
                if resp.status != 200:
                    return False, None
                data = orjson.loads(await resp.read())
                cards = [c for c in data.get("data", []) if isinstance(c, dict) and "id" in c]
                return True, cards
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError):
            return False, None

    async def engine_metrics(self, backend: Backend) -> bytes | None:
        """The engine's ``/metrics`` page, or None when it cannot be read in time."""
        try:
            async with self.session.get(
                backend.url + "/metrics", headers=self._headers, timeout=self._probe_timeout
            ) as resp:
                return await resp.read() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def probe_all(self, pool: BackendPool) -> None:
        pool.apply_drain(await drain.read(self._settings.drain_file))
        results = await asyncio.gather(*(self.probe(b) for b in pool.backends))
        for backend, (ok, cards) in zip(pool.backends, results, strict=True):
            pool.probe_result(backend, ok, cards)

    async def probe_forever(self, pool: BackendPool) -> None:
        interval = self._settings.health_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.probe_all(pool)
            except Exception:
                log.exception("health probe round failed")
