"""Gateway metrics under Gunicorn's multiprocess mode: every gauge merges over live workers
(no per-pid series), and a worker that dies leaves its counts in the counters but not in the
gauges."""

from __future__ import annotations

import json
import os
import signal

import httpx
from prometheus_client import Gauge

from inferstack.gateway import metrics
from tests.procs import SIM_MODEL, TEST_KEY, Processes, metric_samples, metric_total, wait_until

LIVE_MODES = {"livesum", "livemax", "livemin", "liveall", "livemostrecent"}


def test_every_gauge_declares_a_live_multiprocess_mode() -> None:
    """The default mode ("all") keeps a series per pid, also of dead workers."""
    gauges = [v for v in vars(metrics).values() if isinstance(v, Gauge)]
    assert gauges
    for gauge in gauges:
        assert gauge._multiprocess_mode in LIVE_MODES, gauge._name


def test_dead_worker_keeps_counts_and_leaves_gauges(procs: Processes) -> None:
    sim = procs.sim()
    gw = procs.gateway([sim], workers=2)
    body = {"model": SIM_MODEL, "prompt": "x", "max_tokens": 2}
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    limits = httpx.Limits(max_keepalive_connections=0)  # fresh connections reach both workers
    with httpx.Client(base_url=gw.url, headers=headers, limits=limits, timeout=20) as c:
        for _ in range(20):
            assert c.post("/v1/completions", json=body).status_code == 200
    pids = {
        json.loads(line)["pid"]
        for line in gw.log().splitlines()
        if line.startswith("{") and json.loads(line).get("route") == "/v1/completions"
    }
    before = metric_total(gw.url, "inferstack_requests_total", route="/v1/completions")
    assert before == 20
    text = httpx.get(gw.url + "/metrics").text
    healthy = metric_samples(text, "inferstack_backend_healthy")
    assert [v for _, v in healthy] == [1.0]  # one merged series (livemax), not one per worker
    assert all("pid" not in labels for labels, _ in healthy)

    assert len(pids) == 2, f"only workers {pids} served"
    victim = sorted(pids)[0]  # it served requests: they must stay counted
    os.kill(victim, signal.SIGKILL)
    # Gunicorn replaces the worker; the dead one's requests still count, once.
    assert wait_until(lambda: gw.log().count("Application startup complete") >= 3, 30)
    assert metric_total(gw.url, "inferstack_requests_total", route="/v1/completions") == before
    with httpx.Client(base_url=gw.url, headers=headers, limits=limits, timeout=20) as c:
        assert c.post("/v1/completions", json=body).status_code == 200
    assert metric_total(gw.url, "inferstack_requests_total", route="/v1/completions") == before + 1
    text = httpx.get(gw.url + "/metrics").text
    assert [v for _, v in metric_samples(text, "inferstack_backend_healthy")] == [1.0]
    # Nothing is in flight but the scrape, which does not count itself.
    assert wait_until(lambda: metric_total(gw.url, "inferstack_requests_in_flight") == 0)
    text = httpx.get(gw.url + "/metrics").text
    routes = {lb["route"] for lb, _ in metric_samples(text, "inferstack_requests_in_flight")}
    assert "/metrics" not in routes and "/v1/completions" in routes
