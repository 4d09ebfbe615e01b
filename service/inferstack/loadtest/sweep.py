"""Concurrency sweep: levels, stop rules and the production recommendation.

Levels double from 1 (1, 2, 4, 8, ...). After each level the sweep stops when the success rate
is below ``min_success``, TTFT p99 is above the SLO, output throughput grew less than
``min_gain`` over the previous level, or the load generator itself saturated (its figures
could not be trusted). The maximum stable concurrency is the last level that passed every
rule; production should run at 70-80 % of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SweepRules:
    min_success: float = 0.95
    ttft_p99_slo_ms: float | None = 2000.0
    min_gain: float = 0.20
    max_concurrency: int = 1024
    start: int = 1


@dataclass(frozen=True, slots=True)
class LevelOutcome:
    """What the rules need from one level's run."""

    concurrency: int
    completed: int
    failed: int
    p99_ttft_ms: float
    output_throughput: float
    client_saturated: bool = False

    @property
    def success_rate(self) -> float:
        total = self.completed + self.failed
        return self.completed / total if total else 0.0


@dataclass(slots=True)
class Verdict:
    concurrency: int
    passed: bool
    reasons: list[str] = field(default_factory=list)
    gain: float | None = None
    """Output throughput relative to the previous level, minus 1 (None for the first)."""


def levels(rules: SweepRules) -> list[int]:
    out = []
    c = max(1, rules.start)
    while c <= rules.max_concurrency:
        out.append(c)
        c *= 2
    return out


def judge(level: LevelOutcome, previous: LevelOutcome | None, rules: SweepRules) -> Verdict:
    v = Verdict(level.concurrency, True)
    if level.client_saturated:
        v.reasons.append("load generator saturated (its latencies cannot be trusted)")
    if level.success_rate < rules.min_success:
        v.reasons.append(f"success {level.success_rate:.1%} < {rules.min_success:.0%}")
    if rules.ttft_p99_slo_ms is not None and level.p99_ttft_ms > rules.ttft_p99_slo_ms:
        v.reasons.append(
            f"TTFT p99 {level.p99_ttft_ms:.0f} ms > SLO {rules.ttft_p99_slo_ms:.0f} ms"
        )
    if previous is not None and previous.output_throughput > 0:
        v.gain = level.output_throughput / previous.output_throughput - 1
        if v.gain < rules.min_gain:
            v.reasons.append(
                f"throughput gain {v.gain:+.0%} < {rules.min_gain:.0%} over "
                f"concurrency {previous.concurrency}"
            )
    v.passed = not v.reasons
    return v


def recommendation(max_stable: int) -> tuple[int, int] | None:
    """70-80 % of the maximum stable concurrency (at least 1), None when nothing was stable."""
    if max_stable < 1:
        return None
    lo = max(1, math.floor(0.7 * max_stable))
    hi = max(lo, math.floor(0.8 * max_stable))
    return lo, hi
