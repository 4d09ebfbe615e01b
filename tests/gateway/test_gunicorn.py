"""Gunicorn operations: graceful reload on HUP keeps streams alive; TERM drains."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.procs import SIM_MODEL, TEST_KEY, KeepAliveLoad, Proc, Processes, metric_total

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


def _started_pids(gw: Proc) -> set[int]:
    return {
        e["pid"]
        for e in map(json.loads, filter(None, gw.log().splitlines()))
        if e.get("msg", "").startswith("Application startup complete")
    }


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
    old_pids = _started_pids(gw)
    os.kill(gw.pid, signal.SIGHUP)
    for t in threads:
        t.join(30)
    # Every stream finished whole: 100 token events + [DONE].
    assert results == [1100] * 4, results
    # New workers took over and serve; counters kept counting across the reload.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_started_pids(gw) - old_pids) < 2:
        time.sleep(0.1)
    assert len(_started_pids(gw) - old_pids) == 2, gw.log()[-2000:]
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


def test_hup_rereads_the_settings_file(procs: Processes, tmp_path: Path) -> None:
    """New workers read INFERSTACK_CONFIG again: a limit changed in the file applies."""
    sim = procs.sim()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("max_messages: 10\n")
    gw = procs.gateway([sim], workers=2, env={"INFERSTACK_CONFIG": str(cfg)})
    body = {"model": SIM_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}] * 5}
    chat = gw.url + "/v1/chat/completions"
    assert httpx.post(chat, headers=AUTH, json=body).status_code == 200
    old = _started_pids(gw)
    cfg.write_text("max_messages: 3\n")
    os.kill(gw.pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while len(_started_pids(gw) - old) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_started_pids(gw) - old) == 2, gw.log()[-2000:]
    time.sleep(0.5)  # the old workers have stopped accepting
    for _ in range(4):
        r = httpx.post(chat, headers=AUTH, json=body)
        assert r.status_code == 400, r.text  # the new limit of 3 messages applies
        assert r.json()["error"]["param"] == "messages"


def _reload_under_keepalive_load(procs: Processes, lame_duck_s: str) -> tuple[list[str], int]:
    sim = procs.sim("--ttft-ms", "2", "--itl-ms", "2")
    gw = procs.gateway([sim], workers=2, env={"INFERSTACK_LAME_DUCK_S": lame_duck_s})
    body = json.dumps({"model": SIM_MODEL, "prompt": "x", "max_tokens": 4}).encode()
    with KeepAliveLoad(gw.url, "/v1/completions", body, AUTH) as load:
        for _ in range(3):
            time.sleep(1.0)
            os.kill(gw.pid, signal.SIGHUP)
        time.sleep(2.5)
    return load.failures, load.done


def test_hup_under_keepalive_load_resets_no_connection(procs: Processes) -> None:
    failures, done = _reload_under_keepalive_load(procs, "1.0")
    assert done > 100
    assert failures == [], f"{len(failures)} of {done} requests failed: {failures[:3]}"
