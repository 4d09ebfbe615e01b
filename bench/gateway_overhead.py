"""What the gateway adds over calling the engine simulator directly, measured in one run.

    .venv/bin/python bench/gateway_overhead.py [--json FILE]

(a) non-streaming requests at concurrency 1 and 64 against the ``instant`` simulator:
    throughput and p50/p99 latency, direct vs through Gunicorn + Uvicorn workers;
(b) 256 concurrent streams against a paced simulator (fixed TTFT and inter-token gap, so
    that "inter-token latency" means something): TTFT and ITL p50/p99, direct vs gateway.

Direct and gateway runs alternate for several rounds and the median round is reported,
because this machine is shared and noisy: read the ratios, not the absolute numbers. Each
run first opens its connections (one unrecorded request per client worker). ``client_cpu``
is the load generator's own CPU in cores: near 1.0 it is saturated and skews latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from inferstack.localstack import SIM_MODEL, processes
from loadgen import Result, pct, report, run


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


def _median(rounds: list[Result], key: Callable[[Result], float]) -> Result:
    return sorted(rounds, key=key)[len(rounds) // 2]


def _pair(
    direct_url: str,
    gw_url: str,
    body: bytes,
    concurrency: int,
    requests: int,
    rounds: int,
    stream: bool = False,
    stagger_s: float = 0.0,
) -> tuple[list[Result], list[Result]]:
    direct: list[Result] = []
    gateway: list[Result] = []
    for _ in range(rounds):
        for url, out in ((direct_url, direct), (gw_url, gateway)):
            out.append(
                asyncio.run(
                    run(
                        url,
                        body,
                        concurrency,
                        requests,
                        stream=stream,
                        warmup=1,
                        stagger_s=stagger_s,
                    )
                )
            )
    return direct, gateway


def _ms(values: list[float], q: float) -> float:
    return round(pct(values, q) * 1e3, 3)


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
    ap.add_argument("--itl-ms", type=float, default=50.0)
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()

    figures: dict[str, object] = {"workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp, processes(Path(tmp)) as ps:
        instant = ps.sim("--profile", "instant")
        paced = ps.sim(
            "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--max-num-seqs", "1024"
        )
        quiet = {"INFERSTACK_ACCESS_LOG": "false"}
        gw_instant = ps.gateway([instant], workers=args.workers, env=quiet)
        gw_paced = ps.gateway([paced], workers=args.workers, env=quiet)
        path = "/v1/completions"
        body = _body(False, 16)

        for conc, n in ((1, args.requests_c1), (64, args.requests_c64)):
            d, g = _pair(instant.url + path, gw_instant.url + path, body, conc, n, args.rounds)
            dm, gm = _median(d, lambda r: r.throughput), _median(g, lambda r: r.throughput)
            figures[f"nonstream_c{conc}"] = {
                "direct_rps": round(dm.throughput, 1),
                "gateway_rps": round(gm.throughput, 1),
                "throughput_ratio": round(gm.throughput / dm.throughput, 3),
                "direct_p50_ms": _ms(dm.latencies, 50),
                "gateway_p50_ms": _ms(gm.latencies, 50),
                "direct_p99_ms": _ms(dm.latencies, 99),
                "gateway_p99_ms": _ms(gm.latencies, 99),
                "client_cpu_direct": round(dm.client_cpu, 2),
                "client_cpu_gateway": round(gm.client_cpu, 2),
                "failed": dm.failed + gm.failed,
            }

        # Streams: each client worker runs two streams after its warm-up, started at random
        # within one stream's duration so that arrivals do not come in one synchronized burst.
        sbody = _body(True, args.stream_tokens)
        stream_s = (args.ttft_ms + args.itl_ms * (args.stream_tokens - 1)) / 1000
        d, g = _pair(
            paced.url + path,
            gw_paced.url + path,
            sbody,
            args.streams,
            args.streams * 2,
            args.rounds,
            stream=True,
            stagger_s=stream_s,
        )
        dm, gm = _median(d, lambda r: pct(r.itls, 99)), _median(g, lambda r: pct(r.itls, 99))
        figures[f"stream_{args.streams}"] = {
            "configured_ttft_ms": args.ttft_ms,
            "configured_itl_ms": args.itl_ms,
            "tokens_per_stream": args.stream_tokens,
            "direct_ttft_p50_ms": _ms(dm.ttfts, 50),
            "gateway_ttft_p50_ms": _ms(gm.ttfts, 50),
            "direct_ttft_p99_ms": _ms(dm.ttfts, 99),
            "gateway_ttft_p99_ms": _ms(gm.ttfts, 99),
            "direct_itl_p50_ms": _ms(dm.itls, 50),
            "gateway_itl_p50_ms": _ms(gm.itls, 50),
            "direct_itl_p99_ms": _ms(dm.itls, 99),
            "gateway_itl_p99_ms": _ms(gm.itls, 99),
            "client_cpu_direct": round(dm.client_cpu, 2),
            "client_cpu_gateway": round(gm.client_cpu, 2),
            "failed": dm.failed + gm.failed,
        }
    report(figures, args.json)


if __name__ == "__main__":
    main()
