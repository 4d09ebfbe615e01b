"""Test helpers: the local process stack with test keys, and metric readers."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from inferstack.localstack import SIM_MODEL, Proc, free_port, wait_http
from inferstack.localstack import Processes as _Processes
from inferstack.localstack import processes as _processes

TEST_KEY = "sk-test-alpha-0123456789"
OTHER_KEY = "sk-test-beta-9876543210"
TEST_KEYS = {"alpha": TEST_KEY, "beta": OTHER_KEY}

__all__ = [
    "OTHER_KEY",
    "SIM_MODEL",
    "TEST_KEY",
    "Proc",
    "Processes",
    "free_port",
    "metric_samples",
    "metric_total",
    "processes",
    "redis_command",
    "redis_ping",
    "wait_http",
    "wait_until",
]


class Processes(_Processes):
    """The local stack, with the two test keys unless told otherwise."""

    def gateway(self, *args: Any, **kw: Any) -> Proc:  # type: ignore[override]
        kw.setdefault("keys", TEST_KEYS)
        return super().gateway(*args, **kw)

    def redis(self, *args: str, port: int | None = None, conf: Path | None = None) -> Proc:
        """Debian's redis-server on loopback, no persistence (``conf``: start from that file,
        ``args`` still win). ``url`` is its ``redis://`` URL."""
        port = port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=self.workdir))
        argv = ["redis-server"]
        if conf is not None:
            argv.append(str(conf))
        else:
            argv += ["--save", "", "--appendonly", "no", "--port", str(port)]
            argv += ["--bind", "127.0.0.1", "--dir", str(workdir)]
        argv += [*args]
        proc = self._spawn(argv, {}, "redis", port, f"redis://127.0.0.1:{port}/0")
        if not wait_until(lambda: redis_up(port) or proc.popen.poll() is not None, 10):
            raise TimeoutError(f"redis-server did not answer on port {port}:\n{proc.log()}")
        if proc.popen.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{proc.log()}")
        return proc


def processes(tmp: Any) -> Any:
    return _processes(tmp, cls=Processes)


def redis_command(port: int, *args: str, host: str = "127.0.0.1") -> bytes:
    """One command in RESP to a Redis server; its raw reply (b"" when unreachable)."""
    request = f"*{len(args)}\r\n".encode()
    for a in args:
        data = a.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(request)
            return s.recv(65536)
    except OSError:
        return b""


def redis_ping(port: int) -> bool:
    return redis_command(port, "PING") == b"+PONG\r\n"


def redis_up(port: int) -> bool:
    """Answering, with or without a password set."""
    return redis_command(port, "PING").startswith((b"+PONG", b"-NOAUTH"))


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


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` every 20 ms until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
