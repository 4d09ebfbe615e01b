"""Metrics are right under Gunicorn's multiprocess mode: totals are sums over workers."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.procs import (
    SIM_MODEL,
    TEST_KEY,
    Processes,
    metric_samples,
    metric_total,
    wait_until,
)


def test_counters_equal_requests_sent_across_workers(procs: Processes) -> None:
    sims = [procs.sim(), procs.sim()]
    gw = procs.gateway(sims, workers=3)
    n = 90

    async def send() -> list[int]:
        # Waves of fresh connections: each is accepted by whichever worker wakes first.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=gw.url,
            limits=limits,
            timeout=20,
            headers={"Authorization": f"Bearer {TEST_KEY}"},
        ) as c:
            body = {"model": SIM_MODEL, "prompt": "count me", "max_tokens": 3, "ignore_eos": True}
            codes = []
            for _ in range(n // 3):
                rs = await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(3)))
                codes += [r.status_code for r in rs]
            return codes

    assert asyncio.run(send()) == [200] * n
    text = httpx.get(gw.url + "/metrics").text

    def total(name: str, **labels: str) -> float:
        return sum(
            v
            for lb, v in metric_samples(text, name)
            if all(lb.get(k) == x for k, x in labels.items())
        )

    assert (
        total(
            "inferstack_requests_total",
            route="/v1/completions",
            status="200",
            model=SIM_MODEL,
            key_id="alpha",
        )
        == n
    )
    assert total("inferstack_completion_tokens_total", model=SIM_MODEL) == 3 * n
    assert total("inferstack_request_duration_seconds_count", route="/v1/completions") == n
    # In-flight gauges are sampled every half second per worker: they settle at zero.
    assert wait_until(
        lambda: metric_total(gw.url, "inferstack_requests_in_flight", route="/v1/completions") == 0
    )
    assert wait_until(lambda: metric_total(gw.url, "inferstack_backend_in_flight") == 0)
    # The engines saw exactly what the gateway counted.
    engine_total = sum(metric_total(s.url, "vllm:request_success_total") for s in sims)
    assert engine_total == n
    # And more than one worker really served them (pids in the JSON access log).
    entries = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    pids = {e["pid"] for e in entries if e.get("route") == "/v1/completions"}
    assert len(pids) >= 2, f"only workers {pids} served"


def test_streaming_metrics_ttft_and_itl(procs: Processes) -> None:
    sim = procs.sim("--ttft-ms", "30", "--itl-ms", "10")
    gw = procs.gateway([sim], workers=2)
    client_headers = {"Authorization": f"Bearer {TEST_KEY}"}
    for _ in range(4):
        with httpx.stream(
            "POST",
            gw.url + "/v1/completions",
            headers=client_headers,
            json={
                "model": SIM_MODEL,
                "prompt": "x",
                "max_tokens": 6,
                "ignore_eos": True,
                "stream": True,
            },
            timeout=10,
        ) as r:
            assert r.status_code == 200
            r.read()
    text = httpx.get(gw.url + "/metrics").text
    ttft = dict(
        (lb["le"], v)
        for lb, v in metric_samples(text, "inferstack_time_to_first_token_seconds_bucket")
    )
    assert ttft["0.02"] == 0 and ttft["+Inf"] == 4  # 30 ms engine TTFT is seen, not less
    itl_count = sum(
        v for _, v in metric_samples(text, "inferstack_inter_token_latency_seconds_count")
    )
    assert itl_count == 4 * 5  # 6 content chunks per stream -> 5 gaps
    assert metric_total(gw.url, "inferstack_completion_tokens_total") == 24
