"""A small closed-loop load generator on aiohttp, used by the benchmarks in this folder.

Timings follow ``vllm bench serve``: TTFT = send -> first SSE event with choices,
ITL = gaps between consecutive content events, latency = send -> last byte.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Result:
    ok: int = 0
    failed: int = 0
    duration_s: float = 0.0
    client_cpu: float = 0.0
    """Cores the load generator itself used (1.0 = one saturated core: latencies skewed)."""
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(values, 50) * 1000,
        "p99_ms": pct(values, 99) * 1000,
        "mean_ms": statistics.fmean(values) * 1000 if values else float("nan"),
    }


async def run(
    url: str,
    body: bytes | Callable[[], bytes],
    concurrency: int,
    requests: int,
    headers: dict[str, str] | None = None,
    stream: bool = False,
    warmup: int = 0,
    stagger_s: float = 0.0,
    unix_socket: str | None = None,
) -> Result:
    """Send ``requests`` requests with ``concurrency`` workers in a closed loop.

    ``body`` is the request body, or a function making a fresh one for every request.
    Each worker first sends ``warmup`` requests that are not recorded, so that connections
    are open and the measurement starts in steady state rather than in a connection storm;
    then each waits a random ``stagger_s`` fraction so that requests do not move in lockstep.
    With ``unix_socket`` the connections go to that socket (``url`` then names only the path).
    """
    result = Result()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(unix_socket, limit=0)
        if unix_socket
        else aiohttp.TCPConnector(limit=0, force_close=False)
    )
    timeout = aiohttp.ClientTimeout(total=120)
    remaining = requests
    warmed = 0
    ready = asyncio.Event()
    make_body = body if callable(body) else (lambda: body)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal remaining
            nonlocal warmed
            try:
                for _ in range(warmup):
                    async with session.post(url, data=make_body(), headers=hdrs) as resp:
                        await resp.read()
            finally:
                warmed += 1
                if warmed == concurrency:
                    ready.set()  # every worker holds an open connection: measure from here
            await ready.wait()
            if stagger_s:
                await asyncio.sleep(random.uniform(0, stagger_s))
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=make_body(), headers=hdrs) as resp:
                        if resp.status != 200:
                            await resp.read()
                            result.failed += 1
                            continue
                        if stream:
                            last = 0.0
                            while True:
                                event = await resp.content.readuntil(b"\n\n")
                                if not event or event.startswith(b"data: [DONE]"):
                                    break
                                if b'"choices":[]' in event:
                                    continue
                                now = time.perf_counter()
                                if last:
                                    result.itls.append(now - last)
                                else:
                                    result.ttfts.append(now - t0)
                                last = now
                        else:
                            await resp.read()
                except (aiohttp.ClientError, TimeoutError):
                    result.failed += 1
                    continue
                result.latencies.append(time.perf_counter() - t0)
                result.ok += 1

        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await ready.wait()
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*tasks)
        result.duration_s = time.perf_counter() - start
        result.client_cpu = (time.process_time() - cpu) / result.duration_s
    return result


def report(figures: dict[str, Any], path: Path | None) -> None:
    """Print a benchmark's figures as JSON, and write them to ``path`` when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
