"""The backend pool: health, least-outstanding routing, session affinity, admission control.

Each worker process holds its own pool (like each nginx worker holds its own upstream state);
the workers of one gateway share their in-flight counts, and other gateways' requests are seen
through the engines' own counts (``inferstack.gateway.loadreport``).
A backend takes traffic while healthy; it is ejected by an active probe failing, by a
connection error, or by ``eject_after_failures`` consecutive 5xx answers, and re-admitted by
the first passing probe after ``eject_s``.

Admission: a request takes a slot on the chosen backend. When every healthy backend serving
the model is at its in-flight cap, the request waits at most ``admission_wait_ms`` in a FIFO
of at most ``admission_max_waiters`` entries, then gets 429 with ``Retry-After``; with no
healthy backend it gets 503. There is no unbounded queue anywhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Iterable

from inferstack.gateway import metrics
from inferstack.gateway.errors import APIError, busy, unavailable
from inferstack.gateway.settings import BackendConfig, GatewaySettings
from inferstack.gateway.shared import InflightCounter, ReportedCell

log = logging.getLogger("inferstack.gateway")


class Backend:
    """One engine instance as this worker sees it."""

    __slots__ = (
        "_counter",
        "_drained_gauge",
        "_healthy_gauge",
        "_others",
        "consecutive_failures",
        "drained",
        "ejected_until",
        "healthy",
        "label",
        "model_cards",
        "models",
        "url",
    )

    def __init__(self, cfg: BackendConfig, index: int) -> None:
        self.url = cfg.url
        self.label = cfg.label
        self._counter = InflightCounter(index)
        self._others = ReportedCell(index)
        self.healthy = False
        self.ejected_until = 0.0
        self.consecutive_failures = 0
        self.models: frozenset[str] = frozenset()
        self.model_cards: list[dict[str, object]] = []
        self._healthy_gauge = metrics.BACKEND_HEALTHY.labels(self.label)
        self._healthy_gauge.set(0)
        self.drained = False
        self._drained_gauge = metrics.BACKEND_DRAINED.labels(self.label)
        self._drained_gauge.set(0)

    def serves(self, model: str) -> bool:
        return model in self.models

    def set_healthy(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.info("backend %s %s", self.label, "admitted" if healthy else "ejected")
        self.healthy = healthy
        self._healthy_gauge.set(1 if healthy else 0)

    def set_drained(self, drained: bool) -> None:
        if drained != self.drained:
            log.info("backend %s %s", self.label, "drained" if drained else "undrained")
        self.drained = drained
        self._drained_gauge.set(1 if drained else 0)

    @property
    def inflight(self) -> int:
        """Requests outstanding on this backend from every worker of this gateway."""
        return self._counter.total()

    @property
    def my_inflight(self) -> int:
        """Requests outstanding on this backend from this worker."""
        return self._counter.mine

    @property
    def others(self) -> int:
        """Requests on this backend from elsewhere, as the engine last reported them."""
        return self._others.get()

    def set_others(self, count: int) -> None:
        self._others.set(count)

    def acquire(self) -> None:
        self._counter.add(1)

    def release(self) -> None:
        self._counter.add(-1)


_POLL_S = 0.005
"""How often a waiting request looks again for slots freed by other workers."""


def _rendezvous_score(key: str, backend: Backend) -> bytes:
    return hashlib.blake2b(f"{key}|{backend.label}".encode(), digest_size=8).digest()


class BackendPool:
    """Chooses a backend for each request and bounds what waits."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.backends = [Backend(b, i) for i, b in enumerate(settings.backends)]
        self.cap = settings.backend_max_inflight
        self._wait_s = settings.admission_wait_ms / 1000
        self._max_waiters = settings.admission_max_waiters
        self._retry_after = settings.retry_after_s
        self._eject_after = settings.eject_after_failures
        self._eject_s = settings.eject_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def publish_gauges(self) -> None:
        """This worker's in-flight count per backend into the (livesum) gauge."""
        for b in self.backends:
            metrics.BACKEND_IN_FLIGHT.labels(b.label).set(b.my_inflight)

    # ----- model catalogue -----
    def models(self) -> list[dict[str, object]]:
        """Union of the model cards of healthy backends, first card per id."""
        seen: dict[str, dict[str, object]] = {}
        for b in self.backends:
            if b.healthy:
                for card in b.model_cards:
                    seen.setdefault(str(card.get("id")), card)
        return list(seen.values())

    def known_model(self, model: str) -> bool:
        return any(b.serves(model) for b in self.backends)

    def ready(self, model: str | None) -> bool:
        return any(
            b.healthy and not b.drained and (model is None or b.serves(model))
            for b in self.backends
        )

    # ----- choice -----
    def _candidates(self, model: str, exclude: Iterable[Backend]) -> list[Backend]:
        ex = set(map(id, exclude))
        return [
            b
            for b in self.backends
            if b.healthy and not b.drained and b.serves(model) and id(b) not in ex
        ]

    def has_candidates(self, model: str, exclude: Iterable[Backend]) -> bool:
        return bool(self._candidates(model, exclude))

    def _pick(self, candidates: list[Backend], affinity: str | None) -> Backend | None:
        # The in-flight cap counts this gateway's requests only; the choice counts everyone's.
        # Each shared in-flight total is read once: it is a sum over every worker's row.
        counts = [(b.inflight, b) for b in candidates]
        free = [(n + b.others, b) for n, b in counts if n < self.cap]
        if not free:
            return None
        if affinity:
            # Rendezvous hashing over all candidates keeps a session on its engine while it
            # is healthy; only when that engine is full does the request spill elsewhere.
            home = max(candidates, key=lambda b: _rendezvous_score(affinity, b))
            if any(b is home for _, b in free):
                return home
        least = min(n for n, _ in free)
        ties = [b for n, b in free if n == least]
        # Ties are broken at random: between engine load reports other gateways' newest
        # requests are unseen; a fixed order would send every gateway's next request to the
        # first idle engine at once, and two prefills landing together double the time to
        # first token.
        return ties[0] if len(ties) == 1 else random.choice(ties)

    async def acquire(
        self, model: str, route: str, affinity: str | None = None, exclude: Iterable[Backend] = ()
    ) -> Backend:
        """A backend with a slot taken, or 429/503 as an :class:`APIError`."""
        exclude = tuple(exclude)
        deadline = time.monotonic() + self._wait_s
        while True:
            candidates = self._candidates(model, exclude)
            if not candidates:
                metrics.REJECTIONS.labels(route, "no_backend").inc()
                raise unavailable(
                    self._retry_after, f"No healthy backend serves model '{model}' right now."
                )
            chosen = self._pick(candidates, affinity)
            if chosen is not None:
                chosen.acquire()
                return chosen
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._waiters) >= self._max_waiters:
                metrics.REJECTIONS.labels(route, "busy").inc()
                raise busy(
                    self._retry_after,
                    "All backends are at capacity; retry after the indicated delay.",
                )
            await self._wait_for_slot(remaining)

    async def _wait_for_slot(self, wait_s: float) -> None:
        """Wait in FIFO order until this worker frees a slot, or look again after a short
        poll (another worker may have freed one), or until ``wait_s`` passes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, min(wait_s, _POLL_S))
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def release(self, backend: Backend) -> None:
        backend.release()
        self._wake(1)

    def _wake(self, count: int | None = None) -> None:
        """Wake the first ``count`` live waiters in FIFO order (all when None)."""
        woken = 0
        while self._waiters and (count is None or woken < count):
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                woken += 1

    # ----- passive health -----
    def record_success(self, backend: Backend) -> None:
        backend.consecutive_failures = 0

    def record_failure(self, backend: Backend, *, fatal: bool) -> None:
        """A connect error (``fatal``) ejects at once; 5xx answers after a streak."""
        backend.consecutive_failures += 1
        if fatal or backend.consecutive_failures >= self._eject_after:
            backend.ejected_until = time.monotonic() + self._eject_s
            backend.set_healthy(False)

    def apply_drain(self, names: frozenset[str]) -> None:
        """Drain the backends whose name (label) or URL is listed; undrain the rest."""
        undrained = False
        for b in self.backends:
            drained = b.label in names or b.url in names
            undrained |= b.drained and not drained
            b.set_drained(drained)
        if undrained:
            self._wake()

    # ----- active health (called by the prober) -----
    def probe_result(
        self, backend: Backend, ok: bool, cards: list[dict[str, object]] | None
    ) -> None:
        if cards is not None:
            backend.model_cards = cards
            backend.models = frozenset(str(c.get("id")) for c in cards)
        if not ok:
            backend.set_healthy(False)
            return
        if time.monotonic() >= backend.ejected_until:
            if not backend.healthy:
                backend.consecutive_failures = 0
            backend.set_healthy(True)
            self._wake()


def unknown_model_error(model: str, pool: BackendPool) -> APIError:
    names = sorted({str(c.get("id")) for b in pool.backends for c in b.model_cards})
    hint = f" Available: {', '.join(names)}." if names else ""
    return APIError(
        404, f"The model '{model}' does not exist.{hint}", param="model", code="model_not_found"
    )
