"""Arrival times for fixed-rate runs: gamma-distributed gaps, as ``vllm bench serve`` draws them.

Gaps follow Gamma(shape=burstiness, scale=1/(rate*burstiness)): mean 1/rate; burstiness 1 is
a Poisson process, below 1 burstier, above 1 more even, infinite a constant gap. Like vLLM,
the cumulative times are rescaled so that the last arrival falls at n/rate exactly (the run's
offered rate does not drift with the seed).
"""

from __future__ import annotations

import math
import random


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Offsets in seconds from the run's start for ``n`` requests (all 0 when rate is inf)."""
    if n <= 0:
        return []
    if not rate > 0:
        raise ValueError("request rate must be positive")
    if not burstiness > 0:
        raise ValueError("burstiness must be positive")
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    for _ in range(n):
        if math.isinf(burstiness):
            gap = 1.0 / rate
        else:
            gap = rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        t += gap
        times.append(t)
    if times[-1] > 0:
        scale = (n / rate) / times[-1]
        times = [x * scale for x in times]
    return times


def split_weighted(weights: dict[str, int], n: int) -> dict[str, int]:
    """``n`` split over keys in proportion to ``weights`` (largest remainder; sums to n)."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return {k: 0 for k in weights}
    exact = {k: n * max(w, 0) / total for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    rest = n - sum(out.values())
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:rest]:
        out[k] += 1
    return out


def interleave(weights: dict[str, int], n: int) -> list[str]:
    """Which key takes each of ``n`` consecutive arrivals: a smooth weighted round robin, so
    every generator process gets its share spread over the whole run."""
    keys = [k for k, w in sorted(weights.items()) if w > 0]
    if not keys:
        return []
    total = sum(weights[k] for k in keys)
    current = dict.fromkeys(keys, 0)
    order = []
    for _ in range(n):
        for k in keys:
            current[k] += weights[k]
        best = max(keys, key=lambda k: current[k])
        current[best] -= total
        order.append(best)
    return order
