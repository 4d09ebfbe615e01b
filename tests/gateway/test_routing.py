"""Least-loaded routing sees the requests other gateways keep on an engine."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.procs import SIM_MODEL, TEST_KEY, Processes, metric_total, wait_until

LONG = b'{"model":"%s","prompt":"x","max_tokens":2000,"ignore_eos":true,"stream":true}' % (
    SIM_MODEL.encode()
)
SHORT = b'{"model":"%s","prompt":"x","max_tokens":1}' % SIM_MODEL.encode()


def _open(port: int, body: bytes) -> socket.socket:
    """A request to an engine on a raw socket, open until the test closes it."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return s


def _served(sim_url: str) -> float:
    return metric_total(sim_url, "vllm:request_success_total")


@pytest.mark.parametrize("poll", [True, False])
def test_requests_from_elsewhere_steer_the_gateways_choice(procs: Processes, poll: bool) -> None:
    """Engine A runs 4 long requests this gateway did not send (another gateway's: here sent
    to A directly). Reading the engines' counts, the gateway sends its own requests to B;
    without (load_poll_interval_s 0) both engines look idle and get about half each."""
    a = procs.sim("--ttft-ms", "5", "--itl-ms", "20")
    b = procs.sim("--ttft-ms", "5", "--itl-ms", "20")
    env = {"INFERSTACK_LOAD_POLL_INTERVAL_S": "0.1" if poll else "0"}
    gw = procs.gateway([a, b], workers=2, env=env)
    elsewhere = [_open(a.port, LONG) for _ in range(4)]
    try:
        assert wait_until(lambda: metric_total(a.url, "vllm:num_requests_running") == 4)
        if poll:
            assert wait_until(
                lambda: metric_total(gw.url, "inferstack_backend_other_requests") == 4
            ), "the gateway never read engine A's requests"
        headers = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client:
            for _ in range(20):
                r = client.post("/v1/completions", content=SHORT)
                assert r.status_code == 200, r.text
        on_a, on_b = _served(a.url), _served(b.url)
        assert on_a + on_b == 20
        if poll:
            assert on_a == 0, f"{on_a:.0f} of 20 went to the busy engine"
        else:
            assert 0 < on_a < 20, "without engine reports both engines look idle"
    finally:
        for s in elsewhere:
            s.close()
