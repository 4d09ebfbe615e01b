"""Client-side stream measurements for the simulator tests (vLLM bench definitions)."""

from __future__ import annotations

import itertools
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class StreamResult:
    status: int
    ttft: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    text: str = ""

    @property
    def itls(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def tpot(self) -> float:
        t = self.chunk_times
        return (t[-1] - t[0]) / (len(t) - 1)


async def stream_chat(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> StreamResult:
    """POST a streaming chat request; time every chunk that carries choices."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        result = StreamResult(resp.status)
        if resp.status != 200:
            await resp.read()
            return result
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            now = time.perf_counter()
            event = json.loads(line[6:])
            if event.get("usage") and not event["choices"]:
                result.usage = event["usage"]
                continue
            if not event["choices"]:
                continue
            choice = event["choices"][0]
            if not result.chunk_times:
                result.ttft = now - start
            content = choice["delta"].get("content")
            if content:
                result.chunk_times.append(now)
                result.text += content
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
    return result


def chat_body(model: str, max_tokens: int, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        **extra,
    }


def raw_request(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """Open a connection and send a POST without reading the answer."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock.sendall(head + payload)
    return sock
