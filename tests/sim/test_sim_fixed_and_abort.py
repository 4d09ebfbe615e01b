"""Fixed timing mode, admission limits, and aborting requests whose client left."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import aiohttp
import pytest
from simproc import INSTANT_MODEL, SimServer, running, wait_for
from streams import chat_body, raw_request, stream_chat

TTFT_MS = 80.0
ITL_MS = 20.0


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SimServer, SimServer]]:
    timed = SimServer("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS))
    small = SimServer("--ttft-ms", "5", "--itl-ms", "10", "--max-num-seqs", "2")
    with running(timed, small) as (a, b):
        yield a, b


def _timing_misses(results: list, concurrency: int) -> list[str]:
    """How one round's client-side timings miss the configured ones (empty when they match)."""
    assert all(r.status == 200 for r in results)
    assert all(r.usage is not None and r.usage["completion_tokens"] == 15 for r in results)
    ttft = statistics.median(r.ttft for r in results) * 1e3
    tpot = statistics.median(r.tpot for r in results) * 1e3
    itl = statistics.median(x * 1e3 for r in results for x in r.itls)
    # Generous bounds: this host is small and shared; the design target is 5 % or 2 ms.
    checks = {"ttft": (ttft, TTFT_MS, 25), "tpot": (tpot, ITL_MS, 3), "itl": (itl, ITL_MS, 3)}
    return [
        f"c={concurrency} {name} {got:.1f} ms, want {want} ± {tol}"
        for name, (got, want, tol) in checks.items()
        if abs(got - want) >= tol
    ]


@pytest.mark.parametrize("concurrency", [1, 16])
async def test_fixed_ttft_and_itl(servers: tuple[SimServer, SimServer], concurrency: int) -> None:
    timed, _ = servers
    body = chat_body(INSTANT_MODEL, 15)
    misses: list[str] = []
    # The timings are measured by the client on a shared host, where another process can
    # stall it for tens of milliseconds; a round that misses is measured again (3 at most).
    # A simulator that does not keep the configured timings misses every round.
    for _ in range(3):
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(
                *(stream_chat(session, timed.url, body) for _ in range(concurrency))
            )
        round_misses = _timing_misses(list(results), concurrency)
        if not round_misses:
            return
        misses += round_misses
    pytest.fail("; ".join(misses))


async def test_max_num_seqs_queues_requests(servers: tuple[SimServer, SimServer]) -> None:
    _, small = servers
    seen_waiting: list[float] = []

    async def poll() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(40):
                async with s.get(small.url + "/metrics") as r:
                    text = await r.text()
                for line in text.splitlines():
                    if line.startswith("vllm:num_requests_waiting{"):
                        seen_waiting.append(float(line.rsplit(" ", 1)[1]))
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        body = chat_body(INSTANT_MODEL, 25)
        poller = asyncio.create_task(poll())
        results = await asyncio.gather(*(stream_chat(session, small.url, body) for _ in range(5)))
        await poller
    ttfts = sorted(r.ttft for r in results)
    # Two run at once; the last one waits for two full requests (~0.25 s each).
    assert ttfts[0] < 0.1
    assert ttfts[-1] > 0.4
    assert max(seen_waiting) == 3
    queue_sum = small.metric("vllm:request_queue_time_seconds_sum")
    assert queue_sum > 0.5


def _running(server: SimServer) -> float:
    return server.metric("vllm:num_requests_running")


def _waiting(server: SimServer) -> float:
    return server.metric("vllm:num_requests_waiting")


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_promptly(servers: tuple[SimServer, SimServer], stream: bool) -> None:
    timed, _ = servers
    success_before = timed.metric("vllm:request_success_total")
    sock = raw_request(
        timed.port, "/v1/chat/completions", {**chat_body(INSTANT_MODEL, 3000), "stream": stream}
    )
    try:
        wait_for(lambda: _running(timed) == 1, timeout=5)
        if stream:
            sock.settimeout(5)
            assert b"HTTP/1.1 200" in sock.recv(65536)
            time.sleep(0.2)
    finally:
        sock.close()
    took = wait_for(lambda: _running(timed) == 0, timeout=5, interval=0.005)
    assert took < 0.25, took
    assert timed.metric("vllm:request_success_total") == success_before
    assert timed.metric("vllm:kv_cache_usage_perc") == 0


def test_disconnect_while_waiting(servers: tuple[SimServer, SimServer]) -> None:
    _, small = servers
    body = chat_body(INSTANT_MODEL, 3000)
    holders = [raw_request(small.port, "/v1/chat/completions", body) for _ in range(2)]
    try:
        wait_for(lambda: _running(small) == 2)
        queued = raw_request(small.port, "/v1/chat/completions", body)
        wait_for(lambda: _waiting(small) == 1)
        queued.close()
        took = wait_for(lambda: _waiting(small) == 0, interval=0.005)
        assert took < 0.25
        assert _running(small) == 2
    finally:
        for s in holders:
            s.close()
    wait_for(lambda: _running(small) == 0)
