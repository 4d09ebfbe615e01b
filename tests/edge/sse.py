"""A raw-socket SSE client that records when each event arrives and how many events each
socket read completed, so that a buffering or coalescing hop shows (no HTTP library
between the socket and the clock). HTTP/1.1 over TCP or a unix socket, chunked or not.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from dataclasses import dataclass, field

Address = tuple[str, int] | str
"""(host, port) or the path of a unix socket."""


@dataclass
class StreamTiming:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    ttft: float = 0.0
    """Send -> first event with choices (vLLM bench definition)."""
    content_times: list[float] = field(default_factory=list)
    """Arrival of each event with non-empty content."""
    reads: list[int] = field(default_factory=list)
    """Content events completed by each socket read that completed any."""
    body: bytes = b""

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.content_times)]

    @property
    def coalesced_reads(self) -> int:
        """Reads that delivered more than one content event at once."""
        return sum(1 for n in self.reads if n > 1)


def connect(address: Address, timeout: float = 30.0) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    else:
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Dechunker:
    """Incremental chunked transfer decoding."""

    def __init__(self) -> None:
        self.raw = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        out = b""
        while not self.done:
            line_end = self.raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.raw[:line_end].split(b";")[0], 16)
            if size == 0:
                self.done = True
                break
            if len(self.raw) < line_end + 2 + size + 2:
                break
            out += self.raw[line_end + 2 : line_end + 2 + size]
            self.raw = self.raw[line_end + 2 + size + 2 :]
        return out


def start(
    address: Address, path: str, body: bytes, headers: dict[str, str], timeout: float = 60.0
) -> tuple[socket.socket, float]:
    """Send the request; the answer is left to :func:`read`."""
    sock = connect(address, timeout)
    sent = time.perf_counter()
    sock.sendall(request_bytes(path, body, headers))
    return sock, sent


def stream(
    address: Address, path: str, body: bytes, headers: dict[str, str], timeout: float = 60.0
) -> StreamTiming:
    """POST and read the whole answer, timing each SSE event as it completes."""
    return read(*start(address, path, body, headers, timeout))


def read(sock: socket.socket, sent: float) -> StreamTiming:
    """Read the whole answer (then close), timing each SSE event as it completes."""
    try:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            now = time.perf_counter()
            if not data:
                raise ConnectionError(f"closed before the headers: {buf!r}")
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        result = StreamTiming(status=int(lines[0].split()[1]))
        result.headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        chunked = result.headers.get("transfer-encoding", "").lower() == "chunked"
        dechunk = _Dechunker()
        pending = b""
        first_read = True
        data = rest
        while True:
            if not first_read:
                data = sock.recv(65536)
                now = time.perf_counter()
                if not data:
                    break
            first_read = False
            payload = dechunk.feed(data) if chunked else data
            result.body += payload
            pending += payload
            completed = 0
            while b"\n\n" in pending:
                event, _, pending = pending.partition(b"\n\n")
                if not event.startswith(b"data: {"):
                    continue
                parsed = json.loads(event[6:])
                choices = parsed.get("choices") or []
                if not choices:
                    continue
                if not result.ttft:
                    result.ttft = now - sent
                choice = choices[0]
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    result.content_times.append(now)
                    completed += 1
            if completed:
                result.reads.append(completed)
            if chunked and dechunk.done:
                break
        return result
    finally:
        sock.close()
