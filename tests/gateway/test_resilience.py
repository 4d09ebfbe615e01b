"""Disconnects abort upstream, dead engines are routed around, overload is bounded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import socket
import time

import httpx
import openai
import pytest

from tests.procs import SIM_MODEL, TEST_KEY, Processes, metric_total, wait_until

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _running(sim_url: str) -> float:
    return metric_total(sim_url, "vllm:num_requests_running")


def _raw_request(port: int, body: bytes) -> socket.socket:
    """Send a request on a raw socket so the test decides when the connection closes."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_the_engine_request(procs: Processes, stream: bool) -> None:
    sim = procs.sim("--ttft-ms", "20", "--itl-ms", "20")
    gw = procs.gateway([sim], workers=2)
    body = b'{"model":"%s","prompt":"hello","max_tokens":2000,"ignore_eos":true,"stream":%s}' % (
        SIM_MODEL.encode(),
        b"true" if stream else b"false",
    )
    socks = [_raw_request(gw.port, body) for _ in range(3)]
    assert wait_until(lambda: _running(sim.url) == 3), "requests never started on the engine"
    if stream:
        socks[0].recv(4096)  # the stream is flowing
    for s in socks:
        s.close()
    # 2000 tokens at 20 ms would run 40 s; the engine must drop them as soon as we leave.
    assert wait_until(lambda: _running(sim.url) == 0, timeout=3.0), "engine kept generating"
    assert wait_until(
        lambda: (
            metric_total(gw.url, "inferstack_client_disconnects_total", route="/v1/completions")
            == 3
        )
    )
    # The gateway's own in-flight accounting is back to zero as well.
    assert wait_until(lambda: metric_total(gw.url, "inferstack_backend_in_flight") == 0)


def test_killed_engine_mid_run(procs: Processes) -> None:
    """Requests not yet streaming succeed elsewhere; broken streams end; nothing hangs."""
    slow = procs.sim("--ttft-ms", "10", "--itl-ms", "10")
    other = procs.sim("--ttft-ms", "10", "--itl-ms", "10")
    gw = procs.gateway([slow, other], workers=2, env={"INFERSTACK_HEALTH_INTERVAL_S": "5"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)

    def one(i: int) -> str:
        try:
            r = client.completions.create(
                model=SIM_MODEL, prompt=f"p{i}", max_tokens=50, extra_body={"ignore_eos": True}
            )
            return "ok" if r.usage and r.usage.completion_tokens == 50 else "short"
        except openai.APIError as exc:
            return f"error:{type(exc).__name__}"

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        first = [pool.submit(one, i) for i in range(32)]
        time.sleep(0.2)  # the first wave is mid-generation on both engines
        slow.stop(signal.SIGKILL)
        second = [pool.submit(one, 100 + i) for i in range(32)]
        t0 = time.monotonic()
        results_first = [f.result(timeout=30) for f in first]
        results_second = [f.result(timeout=30) for f in second]
        elapsed = time.monotonic() - t0
    assert elapsed < 25, "something hung"
    # Requests sent after the kill never reach the dead engine: they all succeed.
    assert results_second == ["ok"] * 32, results_second
    # Those that were mid-generation on the dead engine fail cleanly (no hang).
    assert all(r == "ok" or r.startswith("error:") for r in results_first), results_first
    assert "ok" in results_first
    # Every worker has ejected it (passively or by its next probe).
    assert wait_until(
        lambda: metric_total(gw.url, "inferstack_backend_healthy", backend=slow.url[7:]) == 0,
        timeout=8,
    )


def test_killed_engine_before_first_token_is_retried(procs: Processes) -> None:
    """A stream whose engine dies before the first token is retried on another engine."""
    doomed = procs.sim("--ttft-ms", "3000", "--itl-ms", "10")
    good = procs.sim("--ttft-ms", "10", "--itl-ms", "10")
    # One worker: least-outstanding routing splits the streams evenly over both engines.
    gw = procs.gateway([doomed, good], workers=1, env={"INFERSTACK_HEALTH_INTERVAL_S": "30"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)

    def stream(i: int) -> int:
        chunks = client.completions.create(
            model=SIM_MODEL,
            prompt=f"x{i}",
            max_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return sum(1 for c in chunks if c.choices and c.choices[0].text)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stream, i) for i in range(8)]
        assert wait_until(lambda: _running(doomed.url) == 4), "streams did not spread"
        doomed.stop(signal.SIGKILL)
        assert [f.result(timeout=20) for f in futures] == [5] * 8
    assert metric_total(gw.url, "inferstack_retries_total") >= 1


def test_overload_answers_429_with_retry_after(procs: Processes) -> None:
    sim = procs.sim("--ttft-ms", "500", "--itl-ms", "10")
    gw = procs.gateway(
        [sim],
        workers=1,
        env={
            "INFERSTACK_BACKEND_MAX_INFLIGHT": "4",
            "INFERSTACK_ADMISSION_WAIT_MS": "50",
            "INFERSTACK_RETRY_AFTER_S": "2",
        },
    )

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=20) as c:
            body = {"model": SIM_MODEL, "prompt": "x", "max_tokens": 2}
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(12)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 4, codes
    assert codes.count(429) == 8, codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "2"
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    assert metric_total(gw.url, "inferstack_rejections_total", reason="busy") == 8


def test_bounded_wait_admits_when_a_slot_frees(procs: Processes) -> None:
    sim = procs.sim("--ttft-ms", "100", "--itl-ms", "1")
    gw = procs.gateway(
        [sim],
        workers=1,
        env={"INFERSTACK_BACKEND_MAX_INFLIGHT": "2", "INFERSTACK_ADMISSION_WAIT_MS": "2000"},
    )

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=20) as c:
            body = {"model": SIM_MODEL, "prompt": "x", "max_tokens": 1}
            rs = await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(6)))
            return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 6


def test_all_backends_down_answers_503(procs: Processes) -> None:
    sim = procs.sim()
    gw = procs.gateway([sim], workers=2, env={"INFERSTACK_RETRY_AFTER_S": "3"})
    sim.stop(signal.SIGKILL)
    # Whether a worker has already ejected the engine or finds out by failing to connect,
    # the answer is the same: 503 with Retry-After (nothing reached an engine).
    for _ in range(6):
        r = httpx.post(
            gw.url + "/v1/completions",
            headers=AUTH,
            json={"model": SIM_MODEL, "prompt": "x", "max_tokens": 1},
        )
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "no_healthy_backend"
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 503)


def test_ejected_engine_is_readmitted(procs: Processes) -> None:
    sim = procs.sim()
    gw = procs.gateway([sim], workers=1)
    port = sim.port
    sim.stop(signal.SIGKILL)
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 503)
    procs.sim(port=port)
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 200, timeout=10)
    r = httpx.post(
        gw.url + "/v1/completions",
        headers=AUTH,
        json={"model": SIM_MODEL, "prompt": "x", "max_tokens": 1},
    )
    assert r.status_code == 200


def test_engine_errors_are_retried_then_reported(procs: Processes) -> None:
    broken = procs.sim("--error-rate", "1.0")
    gw = procs.gateway([broken], workers=1, env={"INFERSTACK_EJECT_AFTER_FAILURES": "100"})
    r = httpx.post(
        gw.url + "/v1/completions",
        headers=AUTH,
        json={"model": SIM_MODEL, "prompt": "x", "max_tokens": 1},
    )
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"


def test_session_affinity_keeps_a_conversation_on_one_engine(procs: Processes) -> None:
    sims = [procs.sim(), procs.sim()]
    gw = procs.gateway(sims, workers=2, env={"INFERSTACK_SESSION_AFFINITY": "header_or_user"})

    def served_by() -> list[float]:
        return [metric_total(s.url, "vllm:request_success_total") for s in sims]

    body = {"model": SIM_MODEL, "prompt": "turn", "max_tokens": 1}
    homes = set()
    for i in range(40):  # until both engines are home to some session (2**-39 to fail)
        session = f"conversation-{i}"
        if i >= 4 and len(homes) == 2:
            break
        before = served_by()
        for _ in range(5):
            r = httpx.post(
                gw.url + "/v1/completions", json=body, headers={**AUTH, "X-Session-ID": session}
            )
            assert r.status_code == 200
        delta = [a - b for a, b in zip(served_by(), before, strict=True)]
        assert sorted(delta) == [0, 5], f"session {session} was split: {delta}"
        homes.add(delta.index(5))
    assert homes == {0, 1}, "every session went to the same engine"
    # The `user` field works the same way when there is no header.
    before = served_by()
    for _ in range(4):
        httpx.post(gw.url + "/v1/completions", json={**body, "user": "u-42"}, headers=AUTH)
    assert sorted(a - b for a, b in zip(served_by(), before, strict=True)) == [0, 4]


@pytest.mark.parametrize("stream", [False, True])
def test_silent_engine_times_out_with_504(procs: Processes, stream: bool) -> None:
    sim = procs.sim("--ttft-ms", "5000", "--itl-ms", "10")
    gw = procs.gateway([sim], workers=1, env={"INFERSTACK_READ_TIMEOUT_S": "0.5"})
    t0 = time.monotonic()
    r = httpx.post(
        gw.url + "/v1/completions",
        headers=AUTH,
        timeout=10,
        json={"model": SIM_MODEL, "prompt": "x", "max_tokens": 2, "stream": stream},
    )
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - t0 < 3
    # The engine was told: its request is aborted, not left running.
    assert wait_until(lambda: _running(sim.url) == 0, timeout=3)
    assert metric_total(gw.url, "inferstack_upstream_errors_total", kind="timeout") == 1
