"""Engine-reported load: the requests other gateways (or direct clients) keep on an engine.

Least-outstanding routing counts what this gateway sent (all its workers, in shared memory);
requests from other gateways are unseen, so two gateways each send to the engine that looks
idle to them, and two prefills landing together double the time to first token. Every
``load_poll_interval_s`` one worker per gateway (the holder of a file lock; when it exits
another takes over within an interval) reads each engine's ``vllm:num_requests_running`` +
``vllm:num_requests_waiting`` and stores, per backend, how many of them are not this gateway's:
the engine's count minus this gateway's in-flight count, at least 0. Routing ranks backends by
in-flight + that number. A failed or unhealthy read stores 0: no opinion, local counts decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os

from inferstack.gateway import metrics, shared
from inferstack.gateway.backends import Backend, BackendPool
from inferstack.gateway.upstream import Upstream

log = logging.getLogger("inferstack.gateway")

_LOAD_METRICS = frozenset({b"vllm:num_requests_running", b"vllm:num_requests_waiting"})
_NAME_LEN = 25  # both names are this long


def engine_load(text: bytes) -> int | None:
    """Running + waiting requests in a vLLM ``/metrics`` page (summed over its series), or
    None when the page has neither."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line[:_NAME_LEN] in _LOAD_METRICS and line[_NAME_LEN : _NAME_LEN + 1] in (b"{", b" "):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(None, 1)[1])
                seen = True
    return int(total) if seen else None


class PollerLock:
    """A non-blocking exclusive lock on a file, held until :meth:`release` or process exit."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process holds the lock (always, without a lock file)."""
        if self._path is None or self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LoadPoller:
    def __init__(self, pool: BackendPool, upstream: Upstream, interval_s: float) -> None:
        self.pool = pool
        self.upstream = upstream
        self.interval_s = interval_s
        self.lock = PollerLock(shared.POLLER_LOCK)

    async def poll(self, backend: Backend) -> None:
        reported = await self.upstream.engine_metrics(backend) if backend.healthy else None
        load = engine_load(reported) if reported is not None else None
        others = max(0, load - backend.inflight) if load is not None else 0
        backend.set_others(others)
        metrics.BACKEND_OTHER_REQUESTS.labels(backend.label).set(others)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(b) for b in self.pool.backends))

    async def run_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                if not self.lock.acquire():
                    continue
                try:
                    await self.poll_all()
                except Exception:
                    log.exception("engine load poll failed")
        finally:
            self.lock.release()
