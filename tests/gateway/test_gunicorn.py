"""Gunicorn operations: graceful reload on HUP keeps streams alive; TERM drains."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from tests.procs import SIM_MODEL, TEST_KEY, Processes, metric_total

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _stream_tokens(url: str, tokens: int, out: list[int]) -> None:
    body = {
        "model": SIM_MODEL,
        "prompt": "x",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    n = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=AUTH, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                n += 1
            if line == "data: [DONE]":
                n += 1000
    out.append(n)


def test_hup_rotates_workers_without_cutting_streams(procs: Processes) -> None:
    sim = procs.sim("--ttft-ms", "10", "--itl-ms", "20")
    gw = procs.gateway([sim], workers=2)
    results: list[int] = []
    threads = [
        threading.Thread(target=_stream_tokens, args=(gw.url, 100, results)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)  # streams are mid-way (100 tokens x 20 ms = 2 s)
    old_pids = {
        e["pid"]
        for e in map(json.loads, filter(None, gw.log().splitlines()))
        if e.get("msg", "").startswith("Application startup complete")
    }
    os.kill(gw.pid, signal.SIGHUP)
    for t in threads:
        t.join(30)
    # Every stream finished whole: 100 token events + [DONE].
    assert results == [1100] * 4, results
    # New workers took over and serve; counters kept counting across the reload.
    deadline = time.monotonic() + 10
    new_pids: set[int] = set()
    while time.monotonic() < deadline and len(new_pids) < 2:
        new_pids = {
            e["pid"]
            for e in map(json.loads, filter(None, gw.log().splitlines()))
            if e.get("msg", "").startswith("Application startup complete")
        } - old_pids
        time.sleep(0.1)
    assert len(new_pids) == 2, gw.log()[-2000:]
    r = httpx.post(
        gw.url + "/v1/completions",
        headers=AUTH,
        json={"model": SIM_MODEL, "prompt": "x", "max_tokens": 1},
    )
    assert r.status_code == 200
    assert metric_total(gw.url, "inferstack_requests_total", route="/v1/completions") == 5


def test_term_lets_running_streams_finish(procs: Processes) -> None:
    sim = procs.sim("--ttft-ms", "10", "--itl-ms", "20")
    gw = procs.gateway([sim], workers=1)
    results: list[int] = []
    t = threading.Thread(target=_stream_tokens, args=(gw.url, 50, results))
    t.start()
    time.sleep(0.4)
    os.kill(gw.pid, signal.SIGTERM)
    t.join(30)
    assert results == [1050]
    assert gw.popen.wait(30) == 0
