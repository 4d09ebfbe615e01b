"""What the gateway adds over calling the engine simulator directly, measured in one run.

    python bench/gateway_overhead.py            # figures go to docs/benchmarks.md by hand

(a) non-streaming requests at concurrency 1 and 64 against the ``instant`` simulator:
    throughput and p50/p99 latency, direct vs through Gunicorn + Uvicorn workers;
(b) 256 concurrent streams against a paced simulator (fixed TTFT and inter-token gap):
    TTFT and inter-token latency p50/p99, direct vs through the gateway.
Direct and gateway runs alternate, several rounds, and the median round is reported, because
this machine is shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from inferstack.localstack import SIM_MODEL, processes
from loadgen import Result, pct, run


def _body(stream: bool, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": SIM_MODEL,
            "prompt": "Benchmark the gateway overhead.",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    ).encode()


def _median_round(rounds: list[Result], key: str) -> Result:
    ordered = sorted(rounds, key=lambda r: r.throughput if key == "tp" else pct(r.ttfts, 50))
    return ordered[len(ordered) // 2]


async def _pair(
    direct_url: str,
    gw_url: str,
    body: bytes,
    concurrency: int,
    requests: int,
    rounds: int,
    stream: bool,
) -> tuple[list[Result], list[Result]]:
    direct, gateway = [], []
    for _ in range(rounds):
        direct.append(await run(direct_url, body, concurrency, requests, stream=stream))
        gateway.append(await run(gw_url, body, concurrency, requests, stream=stream))
    return direct, gateway


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=2, help="gateway workers (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-c1", type=int, default=1000)
    ap.add_argument("--requests-c64", type=int, default=6000)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--stream-tokens", type=int, default=32)
    ap.add_argument("--itl-ms", type=float, default=25.0)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()

    figures: dict[str, object] = {"workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp, processes(Path(tmp)) as ps:
        instant = ps.sim("--profile", "instant")
        paced = ps.sim(
            "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--max-num-seqs", "1024"
        )
        gw_instant = ps.gateway(
            [instant], workers=args.workers, env={"INFERSTACK_ACCESS_LOG": "false"}
        )
        gw_paced = ps.gateway([paced], workers=args.workers, env={"INFERSTACK_ACCESS_LOG": "false"})
        path = "/v1/completions"
        body = _body(False, 16)
        asyncio.run(run(instant.url + path, body, 16, 500))  # warm-up
        asyncio.run(run(gw_instant.url + path, body, 16, 500))

        for conc, n in ((1, args.requests_c1), (64, args.requests_c64)):
            d, g = asyncio.run(
                _pair(
                    instant.url + path,
                    gw_instant.url + path,
                    body,
                    conc,
                    n,
                    args.rounds,
                    stream=False,
                )
            )
            dm, gm = _median_round(d, "tp"), _median_round(g, "tp")
            figures[f"nonstream_c{conc}"] = {
                "direct_rps": dm.throughput,
                "gateway_rps": gm.throughput,
                "throughput_ratio": gm.throughput / dm.throughput,
                "direct_p50_ms": pct(dm.latencies, 50) * 1e3,
                "gateway_p50_ms": pct(gm.latencies, 50) * 1e3,
                "direct_p99_ms": pct(dm.latencies, 99) * 1e3,
                "gateway_p99_ms": pct(gm.latencies, 99) * 1e3,
                "added_p50_ms": (pct(gm.latencies, 50) - pct(dm.latencies, 50)) * 1e3,
                "added_p99_ms": (pct(gm.latencies, 99) - pct(dm.latencies, 99)) * 1e3,
                "failed": dm.failed + gm.failed,
            }

        sbody = _body(True, args.stream_tokens)
        asyncio.run(run(gw_paced.url + path, sbody, 32, 64, stream=True))  # warm-up
        d, g = asyncio.run(
            _pair(
                paced.url + path,
                gw_paced.url + path,
                sbody,
                args.streams,
                args.streams,
                args.rounds,
                stream=True,
            )
        )
        dm, gm = _median_round(d, "ttft"), _median_round(g, "ttft")
        figures[f"stream_{args.streams}"] = {
            "configured_ttft_ms": args.ttft_ms,
            "configured_itl_ms": args.itl_ms,
            "tokens_per_stream": args.stream_tokens,
            "direct_ttft_p50_ms": pct(dm.ttfts, 50) * 1e3,
            "gateway_ttft_p50_ms": pct(gm.ttfts, 50) * 1e3,
            "direct_ttft_p99_ms": pct(dm.ttfts, 99) * 1e3,
            "gateway_ttft_p99_ms": pct(gm.ttfts, 99) * 1e3,
            "added_ttft_p99_ms": (pct(gm.ttfts, 99) - pct(dm.ttfts, 99)) * 1e3,
            "direct_itl_p50_ms": pct(dm.itls, 50) * 1e3,
            "gateway_itl_p50_ms": pct(gm.itls, 50) * 1e3,
            "direct_itl_p99_ms": pct(dm.itls, 99) * 1e3,
            "gateway_itl_p99_ms": pct(gm.itls, 99) * 1e3,
            "added_itl_p99_ms": (pct(gm.itls, 99) - pct(dm.itls, 99)) * 1e3,
            "gateway_itl_mean_ms": statistics.fmean(gm.itls) * 1e3 if gm.itls else None,
            "failed": dm.failed + gm.failed,
        }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
