"""Metric math on recorded timestamp fixtures and hand-made runs (no Locust, no servers)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from inferstack.loadtest.metrics import (
    RequestRecord,
    StreamRecorder,
    parse_goodput,
    peak_concurrency,
    peak_output_tokens_per_s,
    percentile,
    summarize,
)

FIXTURES = Path(__file__).parent / "fixtures"


def replay(name: str, start: float = 0.0) -> tuple[RequestRecord, dict]:
    fx = json.loads((FIXTURES / f"{name}.json").read_text())
    rec = StreamRecorder(start)
    for t, event in fx["events"]:
        if not rec.feed(event.encode(), start + t):
            break
    return rec.record(0, start=0.0, prompt_tokens=7), fx["expect"]


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_fixture(name: str) -> None:
    r, exp = replay(name, start=1000.0)
    assert r.success is exp["success"], r.error
    assert r.output_tokens == exp["output_tokens"]
    if not exp["success"]:
        assert exp["error_contains"] in r.error
        return
    assert r.ttft == pytest.approx(exp["ttft"], abs=1e-6)
    assert r.itl == pytest.approx(exp["itl"], abs=1e-6)
    assert r.latency == pytest.approx(exp["latency"], abs=1e-6)
    assert r.prompt_tokens == exp["prompt_tokens"]
    assert r.usage is exp["usage"]
    if exp["tpot"] is None:
        assert r.tpot is None
    else:
        assert r.tpot == pytest.approx(exp["tpot"], abs=1e-9)


def test_feed_stops_at_done_and_ignores_what_follows() -> None:
    rec = StreamRecorder(0.0)
    assert rec.feed(b'data: {"choices":[{"text":"a"}]}', 0.1)
    assert not rec.feed(b"data: [DONE]", 0.2)
    r = rec.record(3, start=5.0)
    assert (r.index, r.start, r.success, r.latency) == (3, 5.0, True, pytest.approx(0.1))


def test_garbage_event_fails_the_request() -> None:
    rec = StreamRecorder(0.0)
    assert rec.feed(b'data: {"choices":[{"text":"a"}]}', 0.1)
    assert not rec.feed(b"data: {not json", 0.2)
    r = rec.record(0, start=0.0)
    assert not r.success and "unparsable" in r.error


def test_http_failure_keeps_its_message() -> None:
    rec = StreamRecorder(0.0)
    rec.fail("HTTP 429: too many requests")
    r = rec.record(0, start=0.0, status=429)
    assert not r.success and r.error == "HTTP 429: too many requests" and r.status == 429


def test_row_round_trip() -> None:
    r, _ = replay("chat_empty_first_chunk")
    assert RequestRecord.from_row(r.to_row()) == r


@pytest.mark.parametrize("p", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy(p: float) -> None:
    rng = random.Random(p)
    values = [rng.expovariate(1.0) for _ in range(rng.randint(1, 400))]
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)), rel=1e-12)
    assert percentile([], p) == 0.0


def _rec(start: float, ttft: float, itl: list[float], out: int, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        index=0,
        start=start,
        success=ok,
        ttft=ttft if ok else 0.0,
        latency=ttft + sum(itl) if ok else 0.0,
        itl=itl if ok else [],
        output_tokens=out if ok else 0,
        prompt_tokens=10,
        usage=True,
    )


def test_summarize_matches_vllm_formulas() -> None:
    records = [
        _rec(0.0, 0.1, [0.05, 0.05, 0.05], 4),
        _rec(0.2, 0.3, [0.02], 2),
        _rec(0.4, 0.2, [], 1),  # single token: no TPOT
        _rec(0.5, 0.0, [], 0, ok=False),
    ]
    m = summarize(records, duration=2.0, goodput={"ttft": 250, "tpot": 60}, percentiles=[50, 99])
    ttfts = [0.1, 0.3, 0.2]
    tpots = [0.15 / 3, 0.02 / 1]
    itls = [0.05, 0.05, 0.05, 0.02]
    e2els = [0.25, 0.32, 0.2]
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["total_input_tokens"] == 30  # failed requests' tokens are not counted
    assert m["total_output_tokens"] == 7
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(3.5)
    assert m["total_token_throughput"] == pytest.approx(18.5)
    # good: ttft <= 250 ms and tpot <= 60 ms (tpot 0 for one token): requests 1 and 3
    assert m["request_goodput"] == pytest.approx(1.0)
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        assert m[f"mean_{name}_ms"] == pytest.approx(np.mean(values) * 1000)
        assert m[f"median_{name}_ms"] == pytest.approx(np.median(values) * 1000)
        assert m[f"std_{name}_ms"] == pytest.approx(np.std(values) * 1000)
        assert m[f"p99_{name}_ms"] == pytest.approx(np.percentile(values, 99) * 1000)
    assert m["max_concurrent_requests"] == 2


def test_summarize_without_successes_reports_zeros_like_vllm() -> None:
    m = summarize([_rec(0, 0, [], 0, ok=False)], duration=1.0)
    assert m["completed"] == 0 and m["failed"] == 1
    assert m["mean_ttft_ms"] == 0.0 and m["p99_itl_ms"] == 0.0
    assert m["request_goodput"] is None
    assert summarize([], 0.0)["request_throughput"] != summarize([], 0.0)["request_throughput"]


def test_peak_concurrency_is_an_exact_sweep_over_half_open_intervals() -> None:
    a = _rec(0.0, 1.0, [], 1)  # [0, 1)
    b = _rec(1.0, 1.0, [], 1)  # [1, 2): touches a, does not overlap
    c = _rec(0.5, 1.0, [], 1)  # [0.5, 1.5)
    failed = _rec(0.6, 0, [], 0, ok=False)
    assert peak_concurrency([a, b, c, failed]) == 2
    assert peak_concurrency([]) == 0


def test_peak_output_tokens_counts_token_events_per_second_bin() -> None:
    # 3 events in [0,1) from the first, 4 in [1,2) from both
    r1 = _rec(0.0, 0.2, [0.3, 0.3, 0.3, 0.3], 5)  # events 0.2 0.5 0.8 1.1 1.4
    r2 = _rec(1.0, 0.5, [0.2, 0.2], 3)  # events 1.5 1.7 1.9
    assert peak_output_tokens_per_s([r1, r2]) == 5.0
    assert peak_output_tokens_per_s([]) == 0.0


def test_parse_goodput() -> None:
    assert parse_goodput(["ttft:500", "e2el:1e4"]) == {"ttft": 500.0, "e2el": 10000.0}
    for bad in ("ttft", "itl:5", "tpot:x", "ttft:-1", "ttft:nan"):
        with pytest.raises(ValueError):
            parse_goodput([bad])


def test_tpot_uses_usage_tokens_not_events() -> None:
    """Several tokens in one event (speculative decoding, batching proxies): usage counts."""
    rec = StreamRecorder(0.0)
    rec.feed(b'data: {"choices":[{"text":"a b"}]}', 0.1)
    rec.feed(b'data: {"choices":[{"text":" c d"}]}', 0.3)
    rec.feed(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}', 0.3)
    rec.feed(b"data: [DONE]", 0.3)
    r = rec.record(0, start=0.0)
    assert r.output_tokens == 5 and r.itl == [pytest.approx(0.2)]
    assert r.tpot == pytest.approx(0.2 / 4)
    assert math.isclose(r.latency, 0.3)
