"""Test helpers: the local process stack with test keys, and metric readers."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from inferstack.localstack import (
    SIM_MODEL,
    Proc,
    free_port,
    redis_command,
    redis_ping,
    redis_up,
    wait_http,
    wait_until,
)
from inferstack.localstack import Processes as _Processes
from inferstack.localstack import processes as _processes

TEST_KEY = "sk-test-alpha-0123456789"
OTHER_KEY = "sk-test-beta-9876543210"
TEST_KEYS = {"alpha": TEST_KEY, "beta": OTHER_KEY}

__all__ = [
    "OTHER_KEY",
    "SIM_MODEL",
    "TEST_KEY",
    "KeepAliveLoad",
    "Proc",
    "Processes",
    "free_port",
    "metric_samples",
    "metric_total",
    "processes",
    "redis_command",
    "redis_ping",
    "redis_up",
    "wait_http",
    "wait_until",
]


class Processes(_Processes):
    """The local stack, with the two test keys unless told otherwise."""

    def gateway(self, *args: Any, **kw: Any) -> Proc:  # type: ignore[override]
        kw.setdefault("keys", TEST_KEYS)
        return super().gateway(*args, **kw)


def processes(tmp: Any) -> Any:
    return _processes(tmp, cls=Processes)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric from Prometheus text: [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def metric_total(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(
        v
        for lb, v in metric_samples(text, name)
        if all(lb.get(k) == val for k, val in labels.items())
    )


class KeepAliveLoad:
    """``clients`` threads, each sending ``body`` to ``url + path`` back to back on one
    keep-alive connection (as SDK clients, or nginx's upstream pool, do) until the ``with``
    block ends. ``done`` counts the requests, ``failures`` says what went wrong with each
    request that did not answer 200."""

    def __init__(
        self, url: str, path: str, body: bytes, headers: dict[str, str], clients: int = 8
    ) -> None:
        self._args = (url, path, body, headers)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.done = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def _client(self) -> None:
        url, path, body, headers = self._args
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            while not self._stop.is_set():
                failure = ""
                try:
                    r = client.post(path, content=body)
                    if r.status_code != 200:
                        failure = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    failure = repr(exc)
                with self._lock:
                    self.done += 1
                    if failure:
                        self.failures.append(failure)

    def __enter__(self) -> KeepAliveLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
