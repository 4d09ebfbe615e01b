"""Prometheus metrics under vLLM v1's names, types, labels and buckets.

Mirrors ``vllm/v1/metrics/loggers.py`` (PrometheusStatLogger) of the vLLM
release named by the profile's ``vllm_version``: labels ``model_name`` and
``engine``; ``vllm:request_success`` labelled by ``finished_reason``. As in vLLM,
a request that the client aborts adds its processed tokens to the token counters
but is not counted in ``vllm:request_success`` and leaves no per-request
histogram sample.

The metrics live in their own registry, not prometheus-client's global one, so
several simulators can share a process (tests) and nothing else leaks in. The
values are plain numbers updated on the event loop thread (no locks, well under
a microsecond per observation) and turned into metric families at scrape time.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from inferstack.buckets import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from inferstack.sim.profiles import Profile

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FINISH_REASONS = ("stop", "length", "abort", "error")

ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """``[1, 2, 5, 10, 20, 50, ...]`` up to ``max_value``, as vLLM builds token buckets."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


@dataclass(slots=True)
class FinishedStats:
    """What vLLM records for a request that finished (not aborted)."""

    finish_reason: str
    e2e: float
    queued: float
    prefill: float
    decode: float
    inference: float
    prompt_tokens: int
    generation_tokens: int
    max_tokens_param: int | None
    max_tokens: int
    n: int


def _go_float(value: float) -> str:
    """Bucket bound as prometheus-client writes it (``1.0``, ``0.005``, ``+Inf``)."""
    if value == float("inf"):
        return "+Inf"
    text = repr(float(value))
    if "e" in text:  # prometheus-client spells exponents Go-style
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{'+' if not exp.startswith('-') else '-'}{exp.lstrip('+-').zfill(2)}"
    return text


class Hist:
    """A lock-free histogram (single event-loop thread) with Prometheus bucket semantics."""

    __slots__ = ("bounds", "count_by_bucket", "sum")

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = [float(b) for b in buckets] + [float("inf")]
        self.count_by_bucket = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count_by_bucket[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, value: float, count: int) -> None:
        self.count_by_bucket[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    @property
    def count(self) -> int:
        return sum(self.count_by_bucket)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.count_by_bucket, strict=True):
            acc += n
            out.append((_go_float(bound), float(acc)))
        return out


class SimMetrics(Collector):
    """All engine metrics of one simulator, plus process metrics, in one registry."""

    def __init__(self, profile: Profile, num_gpu_blocks: int, process_metrics: bool = True) -> None:
        self.model_name = profile.served_model_name
        self.labels = [self.model_name, "0"]
        self.created = time.time()
        token_buckets = build_1_2_5_buckets(profile.engine.max_model_len)
        # Counters
        self.prefix_queries = 0.0
        self.prefix_hits = 0.0
        self.preemptions = 0.0
        self.prompt_tokens = 0.0
        self.generation_tokens = 0.0
        self.success = dict.fromkeys(FINISH_REASONS, 0.0)
        # Histograms
        self.h_prompt_tokens = Hist(token_buckets)
        self.h_generation_tokens = Hist(token_buckets)
        self.h_iteration_tokens = Hist(ITERATION_TOKEN_BUCKETS)
        self.h_max_num_generation_tokens = Hist(token_buckets)
        self.h_n = Hist(N_BUCKETS)
        self.h_max_tokens = Hist(token_buckets)
        self.h_ttft = Hist(TTFT_BUCKETS)
        self.h_itl = Hist(ITL_BUCKETS)
        self.h_request_tpot = Hist(ITL_BUCKETS)
        self.h_e2e = Hist(REQUEST_LATENCY_BUCKETS)
        self.h_queue = Hist(REQUEST_LATENCY_BUCKETS)
        self.h_inference = Hist(REQUEST_LATENCY_BUCKETS)
        self.h_prefill = Hist(REQUEST_LATENCY_BUCKETS)
        self.h_decode = Hist(REQUEST_LATENCY_BUCKETS)
        self.h_prefill_kv_computed = Hist(token_buckets)
        engine = profile.engine
        self.cache_info = {
            "block_size": str(engine.block_size),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": str(engine.enable_prefix_caching),
            "engine": "0",
            "gpu_memory_utilization": str(engine.gpu_memory_utilization),
            "is_attention_free": "False",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
            "swap_space": "4",
            "swap_space_bytes": str(4 * 1024**3),
        }
        self._state: Callable[[], tuple[int, int, float]] = lambda: (0, 0, 0.0)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        if process_metrics:
            # The process families vLLM's server exposes through prometheus-client.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def bind_state(self, state: Callable[[], tuple[int, int, float]]) -> None:
        """Source of (running, waiting, KV usage), read at every scrape."""
        self._state = state

    # -- recording ------------------------------------------------------------

    def first_token(self, ttft: float, prompt_tokens: int) -> None:
        self.h_ttft.observe(ttft)
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += 1

    def next_token(self, itl: float) -> None:
        self.generation_tokens += 1
        self.h_itl.observe(itl)

    def tokens(self, count: int, itl: float) -> None:
        """``count`` tokens after the first, evenly ``itl`` apart (fixed mode, non-streaming)."""
        if count > 0:
            self.generation_tokens += count
            self.h_itl.observe_many(itl, count)

    def finished(self, s: FinishedStats) -> None:
        reason = s.finish_reason if s.finish_reason in self.success else "stop"
        self.success[reason] += 1
        self.h_e2e.observe(s.e2e)
        self.h_queue.observe(s.queued)
        self.h_prefill.observe(s.prefill)
        self.h_inference.observe(s.inference)
        self.h_decode.observe(s.decode)
        self.h_prefill_kv_computed.observe(s.prompt_tokens)
        self.h_prompt_tokens.observe(s.prompt_tokens)
        self.h_generation_tokens.observe(s.generation_tokens)
        gen = s.generation_tokens
        self.h_request_tpot.observe(s.decode / (gen - 1) if gen > 1 else 0.0)
        if s.max_tokens_param:
            self.h_max_tokens.observe(s.max_tokens_param)
        self.h_max_num_generation_tokens.observe(s.max_tokens)
        if s.n:  # once per client request, not per choice
            self.h_n.observe(s.n)

    def scheduled(self, prompt_tokens: int, cached_tokens: int = 0) -> None:
        self.prefix_queries += prompt_tokens
        self.prefix_hits += cached_tokens

    def preempted(self, count: int = 1) -> None:
        self.preemptions += count

    def iteration(self, tokens: int) -> None:
        self.h_iteration_tokens.observe(tokens)

    # -- exposition -----------------------------------------------------------

    def _labels(self) -> list[str]:
        return ["model_name", "engine"]

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(name, doc, labels=self._labels())
        fam.add_metric(self.labels, value)
        return fam

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=self._labels())
        fam.add_metric(self.labels, value, created=self.created)
        return fam

    def _histogram(self, name: str, doc: str, h: Hist) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=self._labels())
        fam.add_metric(self.labels, h.cumulative(), h.sum)
        labels = dict(zip(self._labels(), self.labels, strict=True))
        fam.samples.append(Sample(f"{name}_created", labels, self.created))
        return fam

    def collect(self) -> Iterable[Metric]:
        running, waiting, kv = self._state()
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", running
        )
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting
        )
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv
        )
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        )
        yield self._counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            self.preemptions,
        )
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens
        )
        yield self._counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            self.generation_tokens,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*self._labels(), "finished_reason"],
        )
        for reason, value in self.success.items():
            success.add_metric([*self.labels, reason], value, created=self.created)
        yield success
        hist = self._histogram
        yield hist(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            self.h_prompt_tokens,
        )
        yield hist(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            self.h_generation_tokens,
        )
        yield hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            self.h_iteration_tokens,
        )
        yield hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            self.h_max_num_generation_tokens,
        )
        yield hist("vllm:request_params_n", "Histogram of the n request parameter.", self.h_n)
        yield hist(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            self.h_max_tokens,
        )
        yield hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            self.h_ttft,
        )
        # Deprecated alias vLLM still exposes in this release; same observations.
        yield hist(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds."
            "DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
            self.h_itl,
        )
        yield hist(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            self.h_itl,
        )
        yield hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            self.h_request_tpot,
        )
        yield hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            self.h_e2e,
        )
        yield hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            self.h_queue,
        )
        yield hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            self.h_inference,
        )
        yield hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            self.h_prefill,
        )
        yield hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            self.h_decode,
        )
        yield hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            self.h_prefill_kv_computed,
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(self.cache_info),
        )
        info.add_metric(list(self.cache_info.values()), 1.0)
        yield info

    def render(self) -> bytes:
        return generate_latest(self.registry)
