"""Where a gateway worker's CPU goes under load: py-spy on one worker, summarised.

    .venv/bin/python bench/profile_gateway.py [--stream] [--seconds 8]

One gateway worker in front of the ``instant`` simulator (non-streaming, concurrency 64) or
a paced one (``--stream``: 128 streams, 25 ms between tokens). py-spy samples the worker and
the inclusive share of the functions that matter is printed (raw samples in --raw FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import tempfile
from pathlib import Path

from inferstack.localstack import SIM_MODEL, processes
from loadgen import pct, run

WATCH = (
    "GatewayASGI.__call__",
    "FastAPI.__call__",
    "_proxied",
    "Proxy.forward",
    "Upstream.post",
    "ClientSession._request",
    "StreamWriter._writelines",
    "Response.__call__",
    "StreamRelay.__call__",
    "EventTracker.feed",
    "RequestResponseCycle.send",
    "model_validate_json",
    "DisconnectGuard.__init__",
    "BackendPool.acquire",
    "GatewayASGI._account",
    "MmapedValue.inc",
    "Histogram.observe",
    "Runner.run",
)


def summarise(raw: Path) -> dict[str, float]:
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        names = {frame.split(" (")[0] for frame in stack.split(";")}
        for watched in WATCH:
            if any(name.endswith(watched) for name in names):
                inclusive[watched] += n
    return {k: round(100 * v / total, 1) for k, v in inclusive.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--raw", type=Path, default=Path(tempfile.gettempdir()) / "gateway.spy")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, processes(Path(tmp)) as ps:
        sim_args = (
            ["--ttft-ms", "50", "--itl-ms", "25", "--max-num-seqs", "1024"]
            if (args.stream)
            else ["--profile", "instant"]
        )
        sim = ps.sim(*sim_args)
        gw = ps.gateway([sim], workers=1, env={"INFERSTACK_ACCESS_LOG": "false"})
        worker = subprocess.run(
            ["pgrep", "-P", str(gw.pid)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        body = json.dumps(
            {
                "model": SIM_MODEL,
                "prompt": "x",
                "max_tokens": 64 if args.stream else 16,
                "ignore_eos": True,
                "stream": args.stream,
            }
        ).encode()
        url = gw.url + "/v1/completions"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "-p",
                worker,
                "-o",
                str(args.raw),
                "-f",
                "raw",
                "-d",
                str(args.seconds),
                "-r",
                "100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = []
        while spy.poll() is None:
            r = asyncio.run(
                run(
                    url,
                    body,
                    128 if args.stream else 64,
                    256 if args.stream else 2000,
                    stream=args.stream,
                    warmup=1,
                )
            )
            results.append(r)
        spy.wait()
    ok = sum(r.ok for r in results)
    seconds = sum(r.duration_s for r in results)
    print(
        json.dumps(
            {
                "mode": "stream" if args.stream else "nonstream",
                "requests_per_s": round(ok / seconds, 1),
                "itl_p99_ms": round(pct([x for r in results for x in r.itls], 99) * 1e3, 2)
                if args.stream
                else None,
                "inclusive_cpu_share_percent": summarise(args.raw),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
