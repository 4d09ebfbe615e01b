"""The "Serving Benchmark Result" block, with ``vllm bench serve``'s labels and layout."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from inferstack.loadtest.metrics import METRIC_HEADERS, percentile_word

WIDTH = 50
DEFAULT_PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")


def _int(label: str, value: Any) -> str:
    return f"{label:<40} {value:<10}"


def _float(label: str, value: float) -> str:
    return f"{label:<40} {value:<10.2f}"


def result_block(
    m: Mapping[str, Any],
    *,
    max_concurrency: int | None = None,
    request_rate: float = math.inf,
    goodput: bool = False,
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    percentiles: Sequence[float] = (99,),
    withheld: str | None = None,
) -> str:
    """The block for one run's aggregates ``m`` (keys of :func:`metrics.summarize`).

    ``withheld``: a reason not to print latency figures (the load generator saturated); the
    counts and throughputs are still printed, each latency section says why it is empty.
    """
    lines = [
        "{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=WIDTH, c="="),
        _int("Successful requests:", m["completed"]),
        _int("Failed requests:", m["failed"]),
    ]
    if max_concurrency is not None:
        lines.append(_int("Maximum request concurrency:", max_concurrency))
    if request_rate != math.inf:
        lines.append(_float("Request rate configured (RPS):", request_rate))
    lines += [
        _float("Benchmark duration (s):", m["duration"]),
        _int("Total input tokens:", m["total_input_tokens"]),
        _int("Total generated tokens:", m["total_output_tokens"]),
        _float("Request throughput (req/s):", m["request_throughput"]),
    ]
    if goodput and m.get("request_goodput") is not None:
        lines.append(_float("Request goodput (req/s):", m["request_goodput"]))
    lines += [
        _float("Output token throughput (tok/s):", m["output_throughput"]),
        _float("Peak output token throughput (tok/s):", m["max_output_tokens_per_s"]),
        _float("Peak concurrent requests:", m["max_concurrent_requests"]),
        _float("Total token throughput (tok/s):", m["total_token_throughput"]),
    ]
    for name in percentile_metrics:
        short, header = METRIC_HEADERS[name]
        lines.append("{s:{c}^{n}}".format(s=header, n=WIDTH, c="-"))
        if withheld:
            lines.append(f"withheld: {withheld}")
            continue
        lines.append(_float(f"Mean {short} (ms):", m[f"mean_{name}_ms"]))
        lines.append(_float(f"Median {short} (ms):", m[f"median_{name}_ms"]))
        for p in percentiles:
            word = percentile_word(p)
            lines.append(_float(f"P{word} {short} (ms):", m[f"p{word}_{name}_ms"]))
    lines.append("=" * WIDTH)
    return "\n".join(lines)
