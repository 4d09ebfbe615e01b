from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import SIM_MODEL, TEST_KEY, Proc, metric_total, processes


@dataclass
class CacheStack:
    gateway: Proc
    sim: Proc
    redis: Proc

    def post(
        self,
        body: dict[str, Any],
        key: str = TEST_KEY,
        headers: dict[str, str] | None = None,
        path: str = "/v1/chat/completions",
    ) -> httpx.Response:
        return post(self.gateway.url, body, key, headers, path)

    def engine_requests(self) -> float:
        return engine_requests(self.sim)

    def metric(self, name: str, **labels: str) -> float:
        return metric_total(self.gateway.url, name, **labels)


def post(
    url: str,
    body: dict[str, Any],
    key: str = TEST_KEY,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> httpx.Response:
    return httpx.post(
        url + path,
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=30,
    )


def engine_requests(sim: Proc) -> float:
    """Generation requests the simulator finished (vLLM's own counter)."""
    return metric_total(sim.url, "vllm:request_success_total")


def chat(prompt: str | None = None, **fields: Any) -> dict[str, Any]:
    """A deterministic chat request (temperature 0) with a prompt unique to the test."""
    content = prompt or f"cache test {uuid.uuid4().hex}"
    body: dict[str, Any] = {
        "model": SIM_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0,
    }
    body.update(fields)
    return body


def sse_events(raw: bytes) -> list[bytes]:
    """The SSE events of a stream body, each with its terminating blank line."""
    parts = raw.split(b"\n\n")
    assert parts[-1] == b"", "stream does not end with a complete event"
    return [p + b"\n\n" for p in parts[:-1]]


@pytest.fixture(scope="module")
def cache_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheStack]:
    """Real Redis on loopback, one instant simulator, Gunicorn with 2 workers caching in it."""
    tmp: Path = tmp_path_factory.mktemp("cache")
    with processes(tmp) as ps:
        redis = ps.redis()
        sim = ps.sim()
        gw = ps.gateway(
            [sim],
            workers=2,
            env={"INFERSTACK_CACHE_BACKEND": "redis", "INFERSTACK_CACHE_REDIS_URL": redis.url},
        )
        yield CacheStack(gw, sim, redis)
