"""Gateway metrics, all named ``inferstack_*`` (never the engine's ``vllm:*`` names).

Under Gunicorn every worker writes its own files in ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` merges them, so a counter equals the sum over workers. Gauges declare how they
merge: ``livesum`` for in-flight counts, ``livemax`` for backend health as any worker sees it.
"""

from __future__ import annotations

import bisect
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from inferstack.buckets import (
    ITL_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    with_finer,
)

# vLLM's buckets plus finer low ones, so engine- and gateway-side percentiles line up.
_LATENCY_BUCKETS = with_finer(REQUEST_LATENCY_BUCKETS, 0.005, 0.01, 0.025, 0.05, 0.1)
_ITL_BUCKETS = with_finer(ITL_BUCKETS, 0.001, 0.0025, 0.005)


REQUESTS = Counter(
    "inferstack_requests",
    "Requests answered by the gateway.",
    ["route", "status", "model", "key_id"],
)
REQUEST_DURATION = Histogram(
    "inferstack_request_duration_seconds",
    "Time from request start to the last byte of the answer.",
    ["route", "model"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "inferstack_time_to_first_token_seconds",
    "Time from request start to the first streamed chunk with choices, as the client sees it.",
    ["model"],
    buckets=TTFT_BUCKETS,
)
ITL = Histogram(
    "inferstack_inter_token_latency_seconds",
    "Gaps between consecutive streamed content chunks.",
    ["model"],
    buckets=_ITL_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "inferstack_prompt_tokens", "Prompt tokens, from the engine's usage.", ["model", "key_id"]
)
COMPLETION_TOKENS = Counter(
    "inferstack_completion_tokens",
    "Generated tokens, from the engine's usage.",
    ["model", "key_id"],
)
IN_FLIGHT = Gauge(
    "inferstack_requests_in_flight",
    "Requests being answered now.",
    ["route"],
    multiprocess_mode="livesum",
)
BACKEND_IN_FLIGHT = Gauge(
    "inferstack_backend_in_flight",
    "Requests outstanding on each backend.",
    ["backend"],
    multiprocess_mode="livesum",
)
BACKEND_OTHER_REQUESTS = Gauge(
    "inferstack_backend_other_requests",
    "Requests on the backend that are not this gateway's (other gateways, direct clients): "
    "the engine's running + waiting count minus this gateway's in-flight, as last read.",
    ["backend"],
    multiprocess_mode="livemax",
)
BACKEND_DRAINED = Gauge(
    "inferstack_backend_drained",
    "1 while the backend is drained (drain file): no new requests, in-flight ones finish.",
    ["backend"],
    multiprocess_mode="livemax",
)
BACKEND_HEALTHY = Gauge(
    "inferstack_backend_healthy",
    "1 when the backend takes traffic, 0 when ejected.",
    ["backend"],
    multiprocess_mode="livemax",
)
UPSTREAM_ERRORS = Counter(
    "inferstack_upstream_errors",
    "Failed calls to a backend, by kind (connect, timeout, status_5xx, disconnect).",
    ["backend", "kind"],
)
RETRIES = Counter("inferstack_retries", "Requests sent again to another backend.", ["route"])
REJECTIONS = Counter(
    "inferstack_rejections",
    "Requests refused by admission control: busy (429) or no_backend (503).",
    ["route", "reason"],
)
CLIENT_DISCONNECTS = Counter(
    "inferstack_client_disconnects",
    "Requests whose client went away before the answer was complete (upstream aborted).",
    ["route"],
)

# Response cache (gateway/cache/).
CACHE_REQUESTS = Counter(
    "inferstack_cache_requests",
    "Generation requests by response-cache result: hit, miss (looked up, answered by an "
    "engine) or bypass (not deterministic, or Cache-Control: no-cache).",
    ["result"],
)
CACHE_ERRORS = Counter(
    "inferstack_cache_errors",
    "Cache operations that failed, timed out or were skipped while the cache was down; "
    "the request went on without the cache.",
    ["op"],
)
CACHE_STORED_BYTES = Counter(
    "inferstack_cache_stored_bytes", "Bytes of answers written to the response cache."
)
CACHE_SINGLEFLIGHT_JOINS = Counter(
    "inferstack_cache_singleflight_joins",
    "Requests that waited for a concurrent identical request's upstream call instead of "
    "making their own.",
)


class ChildCache:
    """Label children by value tuple, skipping ``labels()``'s validation and lock per call.

    Only for label sets with bounded values (routes, served models, configured key ids).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def get(self, *values: str) -> Any:
        try:
            return self._children[values]
        except KeyError:
            child = self._children[values] = self._metric.labels(*values)
            return child


class HistogramBatch:
    """Observations kept in plain per-bucket counts and written to a histogram child in one
    go: one locked memory-mapped write per touched bucket instead of two per observation.

    For per-chunk timings of a stream (hundreds per request). Uses prometheus-client's
    histogram child layout (``_upper_bounds``, ``_buckets``, ``_sum``); falls back to plain
    ``observe`` calls if that ever changes.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    FLUSH_EVERY = 256

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] | None = getattr(child, "_upper_bounds", None)
        if not (self._bounds and hasattr(child, "_buckets") and hasattr(child, "_sum")):
            self._bounds = None
        self._counts = [0] * len(self._bounds or ())
        self._sum = 0.0
        self._pending = 0

    def observe(self, value: float) -> None:
        if self._bounds is None:
            self._child.observe(value)
            return
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._pending += 1
        if self._pending >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        buckets = self._child._buckets
        for i, n in enumerate(self._counts):
            if n:
                buckets[i].inc(n)
                self._counts[i] = 0
        self._child._sum.inc(self._sum)
        self._sum = 0.0
        self._pending = 0


def render() -> tuple[bytes, str]:
    """The exposition for ``/metrics``: merged over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
