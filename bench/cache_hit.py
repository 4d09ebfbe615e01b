"""Response-cache hits against misses (and the cache's cost when it is not used), one run.

    .venv/bin/python bench/cache_hit.py [--json FILE]          # gateway-direct
    .venv/bin/python bench/cache_hit.py --edge [--json FILE]   # through the nginx edge
    .venv/bin/python bench/cache_hit.py --base-url https://edge.example --key sk-... --model M

Without ``--base-url`` the script starts its own stack on loopback: Redis (no persistence),
the ``instant`` engine simulator, and a gateway caching in Redis in front of it (2 workers,
access log off, no API keys).

- Default (gateway-direct): the client calls the caching gateway on loopback TCP; a second
  gateway with ``cache_backend: off`` serves the ``off`` case.
- ``--edge``: the caching gateway listens on a unix socket and Debian's nginx, rendered from
  the nginx role as ``tests/edge/`` and ``bench/edge_overhead.py`` do it (limits far above
  the load), runs in front of it; every case goes client -> nginx -> gateway -> simulator.
  There is no ``off`` case (only the caching gateway is behind the edge).

With ``--base-url`` it sends the same requests to that URL instead (a gateway with
``cache_backend: redis``, or the nginx edge in front of one), and the ``off`` case is left out.

Cases, all to ``/v1/completions``, 16 tokens:

- ``hit``: one deterministic body (``temperature: 0``), stored before measuring;
- ``miss``: deterministic bodies with a fresh ``seed`` each: looked up, fetched, stored;
- ``bypass``: ``temperature: 1`` without seed, so not cacheable (the cache's cost when unused);
- ``off``: the same bypass body on the gateway without cache (only gateway-direct);

non-streaming at concurrency 1 and 64, and streams (32 tokens) at concurrency 64. Cases
alternate for several rounds and the median round (by throughput) is reported: read the
ratios, the machine is shared and noisy. Each case's ``X-Cache`` answer is recorded too
(``x_cache``). Figures and how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.edge.edgeproc import UNLIMITED_VARS, in_front_of  # noqa: E402

from inferstack.localstack import SIM_MODEL, processes  # noqa: E402
from loadgen import Result, pct, report, run  # noqa: E402

PATH = "/v1/completions"

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


def _one_gateway(url: str) -> dict[str, str]:
    """The cases that need only a caching gateway, all sent to ``url``."""
    return {"hit": url, "miss": url, "bypass": url}


def _x_cache(url: str, body: bytes, headers: dict[str, str]) -> str:
    """The ``X-Cache`` header of one answer (empty without one): checks that each case is
    what it is named, through whatever sits in front of the gateway."""
    hdrs = {"Content-Type": "application/json", **headers}
    with urllib.request.urlopen(urllib.request.Request(url, body, hdrs), timeout=30) as resp:
        resp.read()
        return str(resp.headers.get("X-Cache", ""))


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
        row: dict[str, object] = {
            "x_cache": {
                kind: _x_cache(url, _body(model, stream, tokens, kind)(), headers)
                for kind, url in urls.items()
            }
        }
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
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--base-url", help="measure this gateway or edge instead of a local stack")
    where.add_argument("--edge", action="store_true", help="local stack, through nginx in front")
    ap.add_argument("--key", default="", help="API key for --base-url")
    ap.add_argument("--model", default=SIM_MODEL, help="model name for --base-url")
    ap.add_argument("--workers", type=int, default=2, help="local gateway workers (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-c1", type=int, default=500)
    ap.add_argument("--requests-c64", type=int, default=3000)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    sizes = (args.rounds, args.requests_c1, args.requests_c64, args.streams)

    if args.base_url:
        url = args.base_url.rstrip("/") + PATH
        figures = measure(_one_gateway(url), args.key, args.model, *sizes)
        figures["base_url"] = args.base_url
    else:
        with tempfile.TemporaryDirectory() as tmp_name, processes(Path(tmp_name)) as ps:
            tmp = Path(tmp_name)
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
                unix_socket=str(tmp / "gw.sock") if args.edge else None,
            )
            if args.edge:
                with in_front_of(tmp, cached, UNLIMITED_VARS) as nginx:
                    urls = _one_gateway(nginx.edge.url + PATH)
                    figures = measure(urls, "", SIM_MODEL, *sizes)
                figures["path"] = "client -> nginx -> gateway (unix socket) -> simulator"
            else:
                plain = ps.gateway([sim], workers=args.workers, keys={}, env=quiet)
                urls = {**_one_gateway(cached.url + PATH), "off": plain.url + PATH}
                figures = measure(urls, "", SIM_MODEL, *sizes)
                figures["path"] = "client -> gateway (loopback TCP) -> simulator"
        figures["workers"] = args.workers
    report(figures, args.json)


if __name__ == "__main__":
    main()
