"""What the nginx edge adds over calling the gateway directly, measured in one run.

    .venv/bin/python bench/edge_overhead.py [--tcp] [--json FILE]

The edge is the nginx role's configuration rendered into a private prefix (as the tests do)
and Debian's nginx running from it. The gateway (Gunicorn, 2 workers, access log off) listens
on a unix socket as on a host that runs edge and gateway together (``--tcp``: on loopback TCP,
as behind a remote edge); the simulator has fixed timing (TTFT 100 ms, 20 ms between tokens).
Direct = client -> gateway; edge = client -> nginx (TCP) -> gateway.

(a) single streams, direct and edge alternating request by request, timed on a raw socket:
    TTFT and inter-token gaps p50/p99, and reads that delivered more than one token event
    (a buffering hop shows there);
(b) many concurrent streams, direct and edge alternating by round (median round reported);
(c) non-streamed requests at concurrency 1 (one token: latency ~ TTFT).

Read the differences, not the absolute numbers: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.edge import sse  # noqa: E402
from tests.edge.edgeproc import UNLIMITED_VARS, in_front_of  # noqa: E402

from inferstack.localstack import SIM_MODEL, processes  # noqa: E402
from loadgen import Result, pct, report, run  # noqa: E402

KEY = "sk-bench-edge-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PATH = "/v1/completions"


def _body(stream: bool, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": SIM_MODEL,
            "prompt": "Benchmark the edge overhead.",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    ).encode()


def _ms(values: list[float], q: float) -> float:
    return round(pct(values, q) * 1e3, 3)


def _single_streams(
    direct: sse.Address, edge: sse.Address, pairs: int, tokens: int
) -> dict[str, object]:
    body = _body(True, tokens)
    runs: dict[str, list[sse.StreamTiming]] = {"direct": [], "edge": []}
    for _ in range(2):  # warm-up: connections, worker caches
        sse.stream(direct, PATH, body, AUTH)
        sse.stream(edge, PATH, body, AUTH)
    for _ in range(pairs):
        runs["direct"].append(sse.stream(direct, PATH, body, AUTH))
        runs["edge"].append(sse.stream(edge, PATH, body, AUTH))
    out: dict[str, object] = {"pairs": pairs, "tokens_per_stream": tokens}
    for name, timings in runs.items():
        bad = [t for t in timings if t.status != 200 or len(t.content_times) != tokens]
        ttfts = [t.ttft for t in timings]
        itls = [g for t in timings for g in t.itls]
        reads = [n for t in timings for n in t.reads]
        out[name] = {
            "failed": len(bad),
            "ttft_p50_ms": _ms(ttfts, 50),
            "ttft_p99_ms": _ms(ttfts, 99),
            "itl_p50_ms": _ms(itls, 50),
            "itl_p99_ms": _ms(itls, 99),
            "itl_min_ms": round(min(itls) * 1e3, 3),
            "token_events": sum(reads),
            "reads_with_more_than_one_token": sum(1 for n in reads if n > 1),
        }
    d, e = runs["direct"], runs["edge"]
    deltas = [b.ttft - a.ttft for a, b in zip(d, e, strict=True)]
    out["ttft_p50_added_ms"] = round(
        (statistics.median(t.ttft for t in e) - statistics.median(t.ttft for t in d)) * 1e3, 3
    )
    out["ttft_pairwise_added_median_ms"] = round(statistics.median(deltas) * 1e3, 3)
    return out


def _rounds(jobs: dict[str, Callable[[], Result]], rounds: int) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            results[name].append(job())
    return results


def _median(rounds: list[Result], key: Callable[[Result], float]) -> Result:
    return sorted(rounds, key=key)[len(rounds) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tcp", action="store_true", help="gateway on loopback TCP, not a socket")
    ap.add_argument("--pairs", type=int, default=100, help="(a) direct/edge stream pairs")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per stream")
    ap.add_argument("--streams", type=int, default=64, help="(b) concurrent streams")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-c1", type=int, default=200, help="(c) non-streamed requests")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()

    figures: dict[str, object] = {"gateway_listens_on": "tcp" if args.tcp else "unix socket"}
    with tempfile.TemporaryDirectory() as tmp_name, processes(Path(tmp_name)) as ps:
        tmp = Path(tmp_name)
        sim = ps.sim("--ttft-ms", "100", "--itl-ms", "20", "--max-num-seqs", "1024")
        sock = None if args.tcp else str(tmp / "gw.sock")
        gw = ps.gateway(
            [sim],
            workers=2,
            keys={"bench": KEY},
            env={"INFERSTACK_ACCESS_LOG": "false"},
            unix_socket=sock,
        )
        with in_front_of(tmp, gw, UNLIMITED_VARS) as nginx:
            edge = nginx.edge
            direct: sse.Address = sock or ("127.0.0.1", gw.port)
            via_edge: sse.Address = ("127.0.0.1", edge.http_port)
            figures["single_streams"] = _single_streams(direct, via_edge, args.pairs, args.tokens)

            direct_url = ("http://localhost" if sock else gw.url) + PATH
            edge_url = edge.url + PATH
            stream_s = (100 + 20 * (args.tokens - 1)) / 1000

            def streams(url: str, unix: str | None) -> Callable[[], Result]:
                return lambda: asyncio.run(
                    run(
                        url,
                        _body(True, args.tokens),
                        args.streams,
                        args.streams * 2,
                        headers=AUTH,
                        stream=True,
                        warmup=1,
                        stagger_s=stream_s,
                        unix_socket=unix,
                    )
                )

            res = _rounds(
                {"direct": streams(direct_url, sock), "edge": streams(edge_url, None)},
                args.rounds,
            )
            conc: dict[str, object] = {"streams": args.streams, "rounds": args.rounds}
            for name, rounds in res.items():
                m = _median(rounds, lambda r: pct(r.itls, 99))
                conc[name] = {
                    "ttft_p50_ms": _ms(m.ttfts, 50),
                    "ttft_p99_ms": _ms(m.ttfts, 99),
                    "itl_p50_ms": _ms(m.itls, 50),
                    "itl_p99_ms": _ms(m.itls, 99),
                    "client_cpu": round(m.client_cpu, 2),
                    "failed": sum(r.failed for r in rounds),
                }
            figures[f"concurrent_streams_{args.streams}"] = conc

            def single(url: str, unix: str | None) -> Callable[[], Result]:
                return lambda: asyncio.run(
                    run(
                        url,
                        _body(False, 1),
                        1,
                        args.requests_c1,
                        headers=AUTH,
                        warmup=2,
                        unix_socket=unix,
                    )
                )

            res = _rounds(
                {"direct": single(direct_url, sock), "edge": single(edge_url, None)}, args.rounds
            )
            c1: dict[str, object] = {"requests": args.requests_c1, "rounds": args.rounds}
            for name, rounds in res.items():
                m = _median(rounds, lambda r: pct(r.latencies, 50))
                c1[name] = {
                    "p50_ms": _ms(m.latencies, 50),
                    "p99_ms": _ms(m.latencies, 99),
                    "failed": sum(r.failed for r in rounds),
                }
            figures["nonstream_c1_one_token"] = c1
    report(figures, args.json)


if __name__ == "__main__":
    main()
