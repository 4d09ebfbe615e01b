"""Continuous batching under the roofline: behaviour, not exact timings."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator

import aiohttp
import pytest
from simproc import SimServer, running
from streams import chat_body, stream_chat

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROMPT_100 = " ".join(["word"] * 100)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SimServer, SimServer]]:
    # A slow GPU (20 TFLOPS) makes the compute term visible at small batches;
    # time_scale halves every step so the test stays short.
    batching = SimServer(
        "--profile",
        "llama-3.1-8b-h100",
        "--max-num-batched-tokens",
        "256",
        "--set",
        "hardware.peak_tflops=20",
        "--set",
        "time_scale=0.5",
    )
    # A KV cache of 32 blocks: a handful of 250-token sequences cannot all fit.
    tiny_kv = SimServer(
        "--profile",
        "llama-3.1-8b-h100",
        "--kv-cache-tokens",
        "512",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "8",
        "--set",
        "engine.time_scale=0.2",
    )
    with running(batching, tiny_kv) as pair:
        yield pair


async def test_tpot_grows_with_batch_size(servers: tuple[SimServer, SimServer]) -> None:
    server, _ = servers
    async with aiohttp.ClientSession() as session:
        alone = await stream_chat(session, server.url, chat_body(MODEL, 20))
        batch = await asyncio.gather(
            *(stream_chat(session, server.url, chat_body(MODEL, 20)) for _ in range(32))
        )
    assert alone.usage is not None and alone.usage["completion_tokens"] == 20
    assert all(r.usage is not None and r.usage["completion_tokens"] == 20 for r in batch)
    tpot_batch = statistics.median(r.tpot for r in batch)
    # Roofline: ~3.5 ms alone (memory bound), ~20 ms at 32 (compute bound).
    assert tpot_batch > 2.5 * alone.tpot, (alone.tpot, tpot_batch)


async def test_ttft_grows_with_queue_depth(servers: tuple[SimServer, SimServer]) -> None:
    server, _ = servers
    queue_before = server.metric("vllm:request_queue_time_seconds_sum")
    async with aiohttp.ClientSession() as session:
        alone = await stream_chat(session, server.url, chat_body(MODEL, 4, PROMPT_100))
        burst = await asyncio.gather(
            *(stream_chat(session, server.url, chat_body(MODEL, 4, PROMPT_100)) for _ in range(12))
        )
    ttfts = sorted(r.ttft for r in burst)
    # 12 prompts of ~110 tokens through a 256-token budget: prefills queue up.
    assert statistics.mean(ttfts) > 2 * alone.ttft
    assert ttfts[-1] > 3 * ttfts[0]
    assert server.metric("vllm:request_queue_time_seconds_sum") > queue_before
    assert server.metric("vllm:iteration_tokens_total_count") > 0


async def test_kv_cache_full_waits_and_preempts(servers: tuple[SimServer, SimServer]) -> None:
    _, server = servers
    waiting_seen: list[float] = []
    kv_seen: list[float] = []
    done = asyncio.Event()

    async def poll(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            async with session.get(server.url + "/metrics") as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("vllm:num_requests_waiting{"):
                        waiting_seen.append(float(line.rsplit(" ", 1)[1]))
                    elif line.startswith("vllm:kv_cache_usage_perc{"):
                        kv_seen.append(float(line.rsplit(" ", 1)[1]))
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        poller = asyncio.create_task(poll(session))
        results = await asyncio.gather(
            *(stream_chat(session, server.url, chat_body(MODEL, 150, PROMPT_100)) for _ in range(6))
        )
        done.set()
        await poller
    assert all(r.usage is not None and r.usage["completion_tokens"] == 150 for r in results)
    assert all(len(r.chunk_times) == 150 for r in results)
    assert server.metric("vllm:num_preemptions_total") > 0
    assert max(waiting_seen) >= 1
    assert max(kv_seen) > 0.8
    assert server.metric("vllm:num_requests_running") == 0
    assert server.metric("vllm:kv_cache_usage_perc") == 0
