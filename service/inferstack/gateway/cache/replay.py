"""Answers from a cache entry: the stored body, or the stored SSE events replayed.

A replayed stream has the live relay's headers and the engine's events byte for byte,
``data: [DONE]`` last. The usage-only chunk is included when the client asked for it
(``stream_options.include_usage``) and left out otherwise, as the live relay does. Events go
out in batches of up to ``BATCH_BYTES`` (the client parses SSE events, not TCP writes).
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from inferstack.gateway.cache.entry import Entry
from inferstack.gateway.streaming import SSE_HEADERS, is_usage_only

BATCH_BYTES = 64 * 1024


def json_response(entry: Entry, cache_header: tuple[bytes, bytes]) -> Response:
    response = Response(entry.body, status_code=200, media_type="application/json")
    response.raw_headers.append(cache_header)
    return response


class SSEReplay(Response):
    """ASGI response sending a stored stream."""

    def __init__(self, entry: Entry, with_usage: bool, cache_header: tuple[bytes, bytes]) -> None:
        # Not Response.__init__: the body is sent in parts by __call__.
        self.status_code = 200
        self.background = None
        self.raw_headers = [*SSE_HEADERS, cache_header]
        self.events = [e for e in entry.events if with_usage or not is_usage_only(e)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            batch: list[bytes] = []
            size = 0
            for event in self.events:
                batch.append(event)
                size += len(event)
                if size >= BATCH_BYTES:
                    body = b"".join(batch)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    batch, size = [], 0
            body = b"".join(batch)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except OSError:
            pass  # the client left (ASGI 2.4 servers raise under send); nothing upstream to stop
