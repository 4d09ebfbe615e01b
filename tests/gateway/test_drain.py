"""The drain file takes an engine out of rotation without a reload, and its streams finish."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx

from inferstack.gateway.drain import parse
from tests.procs import SIM_MODEL, TEST_KEY, Processes, metric_total, wait_until

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _served(url: str) -> float:
    return metric_total(url, "vllm:request_success_total")


def test_parse_ignores_comments_blanks_and_trailing_slashes() -> None:
    text = "# drained for maintenance\nhttp://10.0.0.5:8100/\n\n  engine2/1  # reboot\n"
    assert parse(text) == {"http://10.0.0.5:8100", "engine2/1"}


def test_drained_backend_gets_no_new_requests_and_finishes_its_stream(
    procs: Processes, tmp_path: Path
) -> None:
    a = procs.sim("--ttft-ms", "5", "--itl-ms", "20")
    b = procs.sim("--ttft-ms", "5", "--itl-ms", "20")
    drain_file = tmp_path / "drain"
    gw = procs.gateway(
        [a, b],
        workers=2,
        env={"INFERSTACK_DRAIN_FILE": str(drain_file), "INFERSTACK_HEALTH_INTERVAL_S": "0.2"},
    )
    body = {"model": SIM_MODEL, "prompt": "x", "max_tokens": 50, "ignore_eos": True}

    def stream() -> str:
        with httpx.stream(
            "POST", gw.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
            timeout=30,
        ) as resp:  # fmt: skip
            return resp.read().decode()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # Streams on both engines (least-outstanding spreads them), then drain engine a.
        running = [pool.submit(stream) for _ in range(4)]
        assert wait_until(lambda: metric_total(a.url, "vllm:num_requests_running") >= 1)
        drain_file.write_text(f"# maintenance\n{a.url}\n")
        assert wait_until(
            lambda: metric_total(gw.url, "inferstack_backend_drained") == 1, timeout=5
        ), "the drain file was not applied"
        before_a = _served(a.url) + metric_total(a.url, "vllm:num_requests_running")
        for _ in range(10):
            r = httpx.post(gw.url + "/v1/completions", json=body, headers=AUTH, timeout=30)
            assert r.status_code == 200
        # Everything in flight on a finished whole; nothing new reached a.
        for f in running:
            assert f.result().rstrip().endswith("data: [DONE]")
        assert _served(a.url) == before_a
        assert metric_total(a.url, "vllm:num_requests_running") == 0

    drain_file.write_text("")  # undrain
    assert wait_until(lambda: metric_total(gw.url, "inferstack_backend_drained") == 0)
    for _ in range(6):
        httpx.post(gw.url + "/v1/completions", json=body, headers=AUTH, timeout=30)
    assert _served(a.url) > before_a, "engine a was not re-admitted"
