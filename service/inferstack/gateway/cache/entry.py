"""The stored value: an engine answer as the exact bytes the engine sent, plus metadata.

A non-streaming answer is kept as its body bytes, so a hit is byte-identical to the original
(``id`` and ``created`` included: the gateway does not rewrite ids). A stream is kept as the
list of its SSE events, byte for byte, *including* the usage chunk: the gateway always asks
the engine for usage, so one entry can answer clients that want the usage chunk and
clients that do not.

Serialised without pickle (an entry read back from Redis is never code) and without a JSON
detour for the bytes: ``MAGIC``, a 4-byte big-endian length, orjson metadata, then the raw
payload. SSE events are cut back out of the payload by the lengths in the metadata.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

MAGIC = b"ISC1"
_HEAD = struct.Struct(">I")

# How an answer may have ended to be kept: a normal end of generation, or the length limit.
CACHEABLE_FINISH = frozenset({"stop", "length", "tool_calls"})


class EntryError(ValueError):
    """A stored value that is not an entry of this format."""


@dataclass(slots=True)
class Entry:
    kind: Literal["json", "sse"]
    body: bytes = b""
    """The whole answer (json)."""
    events: list[bytes] = field(default_factory=list)
    """Every SSE event as the engine sent it, ``\\n\\n`` included, ``data: [DONE]`` last (sse)."""

    def size(self) -> int:
        return len(self.body) + sum(len(e) for e in self.events)

    def dumps(self) -> bytes:
        meta: dict[str, Any] = {"kind": self.kind}
        if self.kind == "sse":
            meta["lengths"] = [len(e) for e in self.events]
            payload = b"".join(self.events)
        else:
            payload = self.body
        head = orjson.dumps(meta)
        return MAGIC + _HEAD.pack(len(head)) + head + payload

    @classmethod
    def loads(cls, value: bytes) -> Entry:
        if not isinstance(value, bytes | bytearray) or value[:4] != MAGIC:
            raise EntryError("not a cache entry")
        try:
            (n,) = _HEAD.unpack_from(value, 4)
            meta = orjson.loads(value[8 : 8 + n])
            payload = bytes(value[8 + n :])
            kind = meta["kind"]
            if kind == "json":
                return cls("json", body=payload)
            if kind != "sse":
                raise EntryError(f"unknown entry kind {kind!r}")
            events, pos = [], 0
            for length in meta["lengths"]:
                events.append(payload[pos : pos + length])
                pos += length
            if pos != len(payload):
                raise EntryError("entry payload does not match its event lengths")
            return cls("sse", events=events)
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise EntryError(f"corrupt cache entry: {exc}") from None


def _finish_reasons(obj: Any) -> list[object]:
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return []
    return [c.get("finish_reason") for c in choices if isinstance(c, dict)]


def json_entry(body: bytes, embeddings: bool) -> Entry | None:
    """An entry for a 200 answer body, or None when it must not be kept."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "error" in obj:
        return None
    if embeddings:
        return Entry("json", body=body) if isinstance(obj.get("data"), list) else None
    reasons = _finish_reasons(obj)
    if not reasons or not all(r in CACHEABLE_FINISH for r in reasons):
        return None
    return Entry("json", body=body)


_FINISH_MARKERS = (b'"finish_reason":"', b'"finish_reason": "')


def sse_entry(events: list[bytes]) -> Entry | None:
    """An entry for a complete stream (ending in ``[DONE]``), or None when it must not be
    kept: no finish reason seen, one that is not a normal end, or an error event."""
    if not events or not events[-1].startswith(b"data: [DONE]"):
        return None
    seen = False
    for event in events[:-1]:
        if b'"error"' in event and b'"choices"' not in event:
            return None
        if not any(m in event for m in _FINISH_MARKERS):
            continue
        try:
            obj = orjson.loads(event.partition(b"data:")[2])
        except orjson.JSONDecodeError:
            return None
        for reason in _finish_reasons(obj):
            if reason is None:
                continue
            if reason not in CACHEABLE_FINISH:
                return None
            seen = True
    return Entry("sse", events=list(events)) if seen else None
