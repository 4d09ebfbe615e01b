"""Points for the charts: one per level of a multi-level run, or time windows of a single one."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from inferstack.loadtest.metrics import RequestRecord, percentile


def token_times(r: RequestRecord) -> list[float]:
    """When each token event of a successful request arrived (run time, seconds)."""
    if not r.success:
        return []
    t = r.start + r.ttft
    out = [t]
    for gap in r.itl:
        t += gap
        out.append(t)
    return out


def level_point(level: Mapping[str, Any]) -> dict[str, Any]:
    m = level["metrics"]
    attempts = m["completed"] + m["failed"]
    duration = m["duration"] or math.nan
    users = level.get("users") or 0
    conc = level.get("concurrency") or users
    return {
        "label": level.get("label", ""),
        "concurrency": float(conc),
        "request_rate": attempts / duration,
        "error_rate": m["failed"] / attempts if attempts else 0.0,
        "output_throughput": m["output_throughput"],
        "per_user": m["output_throughput"] / conc if conc else 0.0,
        "p99_ttft_ms": m["p99_ttft_ms"],
        "p99_e2el_ms": m["p99_e2el_ms"],
        "p99_itl_ms": m["p99_itl_ms"],
    }


def windows(
    records: Sequence[RequestRecord], duration: float, count: int = 10, min_width: float = 1.0
) -> list[dict[str, Any]]:
    """A single run cut into time windows, each summarized like a level.

    Concurrency is the mean number of requests in flight during the window; throughput counts
    token events in the window; rates, errors and latencies use requests sent in the window.
    """
    if duration <= 0 or not records:
        return []
    width = max(min_width, duration / count)
    n = max(1, math.ceil(duration / width - 1e-9))
    out = []
    for k in range(n):
        a = k * width
        b = duration if k == n - 1 else (k + 1) * width
        span = max(b - a, 1e-9)
        sent = [r for r in records if a <= r.start < b]
        ok = [r for r in sent if r.success]
        tokens = sum(1 for r in records for t in token_times(r) if a <= t < b)
        busy = sum(max(0.0, min(r.end, b) - max(r.start, a)) for r in records if r.success)
        conc = busy / span
        out.append(
            {
                "label": f"{a:.0f}-{b:.0f}s",
                "window": True,
                "concurrency": conc,
                "request_rate": len(sent) / span,
                "error_rate": (len(sent) - len(ok)) / len(sent) if sent else 0.0,
                "output_throughput": tokens / span,
                "per_user": tokens / span / conc if conc > 0 else 0.0,
                "p99_ttft_ms": percentile([r.ttft for r in ok], 99) * 1000,
                "p99_e2el_ms": percentile([r.latency for r in ok], 99) * 1000,
                "p99_itl_ms": percentile([g for r in ok for g in r.itl], 99) * 1000,
            }
        )
    return out


def itl_bins(
    records: Sequence[RequestRecord], width: float = 1.0
) -> list[tuple[float, float, float]]:
    """(bin start, median ITL ms, p99 ITL ms) of the gaps that ended in each ``width`` bin."""
    bins: dict[int, list[float]] = {}
    for r in records:
        if not r.success:
            continue
        t = r.start + r.ttft
        for gap in r.itl:
            t += gap
            bins.setdefault(int(t // width), []).append(gap)
    return [
        (k * width, percentile(v, 50) * 1000, percentile(v, 99) * 1000)
        for k, v in sorted(bins.items())
    ]
