"""Response-cache hits against misses (and the cache's cost when it is not used), one run.

    .venv/bin/python bench/cache_hit.py [--json FILE]
    .venv/bin/python bench/cache_hit.py --base-url https://edge.example --key sk-... --model M

Without ``--base-url`` the script starts its own stack on loopback: Redis (no persistence),
the ``instant`` engine simulator, and two gateways in front of it (2 workers each, access
log off): one caching in Redis, one with ``cache_backend: off``. With ``--base-url`` it sends
the same requests to that URL instead (a gateway with ``cache_backend: redis``, or the nginx
edge in front of one), and the ``off`` case is left out.

Cases, all to ``/v1/completions``, 16 tokens:

- ``hit``: one deterministic body (``temperature: 0``), stored before measuring;
- ``miss``: deterministic bodies with a fresh ``seed`` each: looked up, fetched, stored;
- ``bypass``: ``temperature: 1`` without seed, so not cacheable (the cache's cost when unused);
- ``off``: the same bypass body on the gateway without cache (only with the local stack);

non-streaming at concurrency 1 and 64, and streams (32 tokens) at concurrency 64. Cases
alternate for several rounds and the median round is reported: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from inferstack.localstack import SIM_MODEL
from loadgen import Result, pct, report, run

_seeds = itertools.count(1)


def _body(model: str, stream: bool, tokens: int, kind: str) -> Callable[[], bytes]:
    base: dict[str, object] = {
        "model": model,
        "prompt": "Benchmark the response cache.",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    if kind == "hit":
        fixed = json.dumps({**base, "temperature": 0}).encode()
        return lambda: fixed
    if kind == "miss":
        return lambda: json.dumps({**base, "temperature": 0, "seed": next(_seeds)}).encode()
    sampled = json.dumps({**base, "temperature": 1.0}).encode()
    return lambda: sampled


def _ms(values: list[float], q: float) -> float:
    return round(pct(values, q) * 1e3, 3)


def measure(
    urls: dict[str, str],
    key: str,
    model: str,
    rounds: int,
    requests_c1: int,
    requests_c64: int,
    streams: int,
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    figures: dict[str, object] = {}
    cases = [
        ("nonstream_c1", False, 16, 1, requests_c1),
        ("nonstream_c64", False, 16, 64, requests_c64),
        ("stream_c64", True, 32, 64, streams),
    ]
    for name, stream, tokens, conc, n in cases:
        # store the hit entry before measuring
        asyncio.run(run(urls["hit"], _body(model, stream, tokens, "hit"), 1, 1, headers, stream))
        results: dict[str, list[Result]] = {kind: [] for kind in urls}
        for _ in range(rounds):
            for kind, url in urls.items():
                body = _body(model, stream, tokens, kind)
                results[kind].append(
                    asyncio.run(run(url, body, conc, n, headers, stream=stream, warmup=1))
                )
        row: dict[str, object] = {}
        for kind, rs in results.items():
            median = sorted(rs, key=lambda r: r.throughput)[len(rs) // 2]
            row[kind] = {
                "rps": round(median.throughput, 1),
                "p50_ms": _ms(median.latencies, 50),
                "p99_ms": _ms(median.latencies, 99),
                "failed": sum(r.failed for r in rs),
                "client_cpu": round(median.client_cpu, 2),
            }
        hit, miss = row["hit"], row["miss"]
        assert isinstance(hit, dict) and isinstance(miss, dict)
        row["hit_over_miss_rps"] = round(hit["rps"] / miss["rps"], 2)
        row["hit_over_miss_p99"] = round(hit["p99_ms"] / miss["p99_ms"], 2)
        if "off" in row:
            bypass, off = row["bypass"], row["off"]
            assert isinstance(bypass, dict) and isinstance(off, dict)
            row["bypass_over_off_rps"] = round(bypass["rps"] / off["rps"], 3)
        figures[name] = row
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base-url", help="measure this gateway or edge instead of a local stack")
    ap.add_argument("--key", default="", help="API key for --base-url")
    ap.add_argument("--model", default=SIM_MODEL, help="model name for --base-url")
    ap.add_argument("--workers", type=int, default=2, help="local gateway workers (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-c1", type=int, default=500)
    ap.add_argument("--requests-c64", type=int, default=3000)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    path = "/v1/completions"
    sizes = (args.rounds, args.requests_c1, args.requests_c64, args.streams)

    if args.base_url:
        url = args.base_url.rstrip("/") + path
        figures = measure({"hit": url, "miss": url, "bypass": url}, args.key, args.model, *sizes)
        figures["base_url"] = args.base_url
    else:
        from inferstack.localstack import processes

        with tempfile.TemporaryDirectory() as tmp, processes(Path(tmp)) as ps:
            redis = ps.redis()
            sim = ps.sim("--profile", "instant")
            quiet = {"INFERSTACK_ACCESS_LOG": "false"}
            cached = ps.gateway(
                [sim],
                workers=args.workers,
                keys={},
                env={
                    **quiet,
                    "INFERSTACK_CACHE_BACKEND": "redis",
                    "INFERSTACK_CACHE_REDIS_URL": redis.url,
                },
            )
            plain = ps.gateway([sim], workers=args.workers, keys={}, env=quiet)
            urls = {
                "hit": cached.url + path,
                "miss": cached.url + path,
                "bypass": cached.url + path,
                "off": plain.url + path,
            }
            figures = measure(urls, "", SIM_MODEL, *sizes)
        figures["workers"] = args.workers
    report(figures, args.json)


if __name__ == "__main__":
    main()
