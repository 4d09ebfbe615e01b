"""aiohttp vs httpx as the gateway's upstream client, on the streaming relay, in one run.

    python bench/http_clients.py

A minimal relay (Uvicorn, one process, no gateway logic) forwards an engine's SSE stream with
each client in turn, in front of the same ``instant`` simulator. Measured from a separate load
process: completed streams per second and relay TTFT at 64 concurrent streams, plus
non-streaming requests per second at concurrency 64. Rounds alternate between clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from inferstack.localstack import SIM_MODEL, free_port, processes, wait_http
from loadgen import pct, run

UPSTREAM = os.environ.get("RELAY_UPSTREAM", "")
CLIENT = os.environ.get("RELAY_CLIENT", "aiohttp")


def make_app():  # type: ignore[no-untyped-def]
    """The relay app for RELAY_CLIENT in front of RELAY_UPSTREAM."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    state: dict[str, object] = {}

    async def startup() -> None:
        if CLIENT == "aiohttp":
            import aiohttp

            state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        else:
            import httpx

            state["s"] = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=512), timeout=60
            )

    async def relay(request: Request) -> Response:
        body = await request.body()
        stream = b'"stream": true' in body or b'"stream":true' in body
        hdrs = {"Content-Type": "application/json"}
        url = UPSTREAM + "/v1/completions"
        if CLIENT == "aiohttp":
            s = state["s"]
            resp = await s.post(url, data=body, headers=hdrs)  # type: ignore[attr-defined]
            if not stream:
                data = await resp.read()
                resp.release()
                return Response(data, media_type="application/json")

            async def gen_a() -> AsyncIterator[bytes]:
                try:
                    while True:
                        ev = await resp.content.readuntil(b"\n\n")
                        if not ev:
                            return
                        yield ev
                finally:
                    resp.release()

            return StreamingResponse(gen_a(), media_type="text/event-stream")
        c = state["s"]
        req = c.build_request("POST", url, content=body, headers=hdrs)  # type: ignore[attr-defined]
        r = await c.send(req, stream=True)  # type: ignore[attr-defined]
        if not stream:
            data = await r.aread()
            await r.aclose()
            return Response(data, media_type="application/json")

        async def gen_h() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.aiter_raw():
                    yield chunk
            finally:
                await r.aclose()

        return StreamingResponse(gen_h(), media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await startup()
        yield

    return Starlette(routes=[Route("/v1/completions", relay, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1500)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, processes(Path(tmp)) as ps:
        sim = ps.sim("--profile", "instant")
        relays = {}
        for client in ("aiohttp", "httpx"):
            port = free_port()
            env = {
                **os.environ,
                "RELAY_UPSTREAM": sim.url,
                "RELAY_CLIENT": client,
                "PYTHONPATH": str(Path(__file__).resolve().parent),
            }
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "http_clients:make_app",
                    "--port",
                    str(port),
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                env=env,
            )
            ps.procs.append(
                type(sim)(p, Path(tmp) / f"relay-{client}.log", f"http://127.0.0.1:{port}", port)
            )
            relays[client] = f"http://127.0.0.1:{port}/v1/completions"
            wait_http(f"http://127.0.0.1:{port}/nothing", status=404, proc=p)
        sbody = json.dumps(
            {
                "model": SIM_MODEL,
                "prompt": "x",
                "max_tokens": args.tokens,
                "ignore_eos": True,
                "stream": True,
            }
        ).encode()
        body = json.dumps({"model": SIM_MODEL, "prompt": "x", "max_tokens": 16}).encode()
        for url in relays.values():
            asyncio.run(run(url, sbody, 16, 200, stream=True))
        for _ in range(args.rounds):
            for client, url in relays.items():
                fig = out.setdefault(
                    client,
                    {
                        "streams_per_s": [],
                        "ttft_p50_ms": [],
                        "ttft_p99_ms": [],
                        "requests_per_s": [],
                    },
                )
                r = asyncio.run(run(url, sbody, 64, args.streams, stream=True))
                fig["streams_per_s"].append(r.throughput)
                fig["ttft_p50_ms"].append(pct(r.ttfts, 50) * 1e3)
                fig["ttft_p99_ms"].append(pct(r.ttfts, 99) * 1e3)
                r2 = asyncio.run(run(url, body, 64, args.requests))
                fig["requests_per_s"].append(r2.throughput)
    med = {c: {k: sorted(v)[len(v) // 2] for k, v in f.items()} for c, f in out.items()}
    med["ratio_aiohttp_over_httpx"] = {
        k: med["aiohttp"][k] / med["httpx"][k] for k in med["aiohttp"]
    }
    text = json.dumps(med, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
