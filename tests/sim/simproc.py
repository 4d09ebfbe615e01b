"""Helpers that run ``python -m inferstack.sim`` on loopback for the simulator tests."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

INSTANT_MODEL = "inferstack/sim-instant"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SimServer:
    """``python -m inferstack.sim`` in a subprocess on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "inferstack.sim", "--port", str(self.port), *args]
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def wait_listening(self, timeout: float = 15.0) -> SimServer:
        """Wait until the HTTP server answers (any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"simulator exited with {self.proc.returncode}: {out}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url + "/version", timeout=0.5)
                return self
            time.sleep(0.05)
        raise TimeoutError("simulator did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample (summed over label sets that match ``labels``)."""
        return metric_value(self.metrics(), name, **labels)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    if not found:
        raise KeyError(f"{name}{labels} not in metrics")
    return total


@contextlib.contextmanager
def running(*servers: SimServer) -> Iterator[tuple[SimServer, ...]]:
    try:
        for s in servers:
            s.wait_listening()
        yield servers
    finally:
        for s in servers:
            s.stop()


def wait_for(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> float:
    """Poll ``predicate`` until true; return the seconds it took (raise on timeout)."""
    assert callable(predicate)
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not met")
        time.sleep(interval)
