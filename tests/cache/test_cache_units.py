"""Cache keys, cacheability, the entry format and the memory backend's cap."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from inferstack.gateway.cache.entry import Entry, EntryError, json_entry, sse_entry
from inferstack.gateway.cache.keys import cache_key, client_controls, is_deterministic
from inferstack.gateway.cache.store import BoundedMemoryCache, CacheStore, EntrySerializer
from inferstack.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferstack.gateway.settings import GatewaySettings

ROUTE = "/v1/chat/completions"


def _chat(**fields: object) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


def _key(req: ChatCompletionRequest, key_id: str = "a", ns: str = "tenant") -> str:
    return cache_key(req, ROUTE, key_id, ns).entry  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "cacheable"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0, "n": 1}, True),
        ({"temperature": 1.2, "seed": 3}, True),
        ({"top_k": 1}, True),
        ({}, False),
        ({"temperature": 0.5}, False),
        ({"temperature": 0, "n": 2}, False),
        ({"seed": 1, "n": 3}, False),
        ({"temperature": 0, "best_of": 4}, False),
    ],
)
def test_only_deterministic_requests_are_cacheable(
    fields: dict[str, object], cacheable: bool
) -> None:
    assert is_deterministic(_chat(**fields)) is cacheable


def test_embeddings_are_always_cacheable() -> None:
    assert is_deterministic(EmbeddingRequest.model_validate_json(b'{"model":"m","input":"x"}'))


def test_key_ignores_spelling_and_delivery_but_not_content() -> None:
    base = _key(_chat(temperature=0))
    assert _key(_chat(temperature=0.0, stream=False, user="u")) == base
    streamed = _chat(temperature=0, stream=True)
    with_usage = _chat(temperature=0, stream=True, stream_options={"include_usage": True})
    assert _key(streamed) == _key(with_usage) != base
    continuous = _chat(
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    assert _key(continuous) != _key(streamed)
    for changed in (
        {"max_tokens": 5},
        {"seed": 1},
        {"top_k": 1},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"model": "other"},
    ):
        assert _key(_chat(temperature=0, **changed)) != base, changed
    # absent and explicit null differ for vLLM (completions' max_tokens: 16 vs the context)
    assert _key(_chat(temperature=0, max_tokens=None)) != base


def test_key_namespaces() -> None:
    req = _chat(temperature=0)
    assert _key(req, "a") != _key(req, "b")
    assert _key(req, "a", "shared") == _key(req, "b", "shared")
    assert ":t:a:" in _key(req, "a")
    completion = CompletionRequest.model_validate_json(b'{"model":"m","prompt":"hi"}')
    assert cache_key(completion, "/v1/completions", "a", "tenant") != cache_key(
        completion, "/v1/chat/completions", "a", "tenant"
    )


@pytest.mark.parametrize(
    ("header", "lookup", "store"),
    [
        (None, True, True),
        ("no-cache", False, True),
        ("No-Store", True, False),
        ("max-age=0, no-cache, no-store", False, False),
        ("max-age=10", True, True),
    ],
)
def test_cache_control(header: str | None, lookup: bool, store: bool) -> None:
    c = client_controls(header)
    assert (c.lookup, c.store) == (lookup, store)


def test_entry_round_trip() -> None:
    body = b'{"id":"x","choices":[{"finish_reason":"stop"}]}'
    assert Entry.loads(Entry("json", body=body).dumps()).body == body
    events = [b'data: {"a":1}\n\n', b"data: {}\n\n", b"data: [DONE]\n\n"]
    assert Entry.loads(Entry("sse", events=events).dumps()).events == events
    ser = EntrySerializer()
    assert ser.loads(None) is None
    for bad in (b"", b"garbage", b"ISC1\x00\x00\x00\x05{}", b"ISC1\x00\x00\x00\x02{}"):
        with pytest.raises(EntryError):
            Entry.loads(bad)


def _chunk(reason: str | None) -> bytes:
    obj = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": reason}]}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def test_only_complete_normal_streams_are_kept() -> None:
    done = b"data: [DONE]\n\n"
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    assert sse_entry([_chunk(None), _chunk("stop"), usage, done]) is not None
    assert sse_entry([_chunk(None), _chunk("length"), done]) is not None
    assert sse_entry([_chunk(None), _chunk("tool_calls"), done]) is not None
    assert sse_entry([_chunk(None), _chunk("stop")]) is None  # truncated: no [DONE]
    assert sse_entry([_chunk(None), _chunk("abort"), done]) is None
    assert sse_entry([_chunk(None), done]) is None  # never finished
    error = b'data: {"error":{"message":"broken","code":"upstream_stream_broken"}}\n\n'
    assert sse_entry([_chunk(None), error, done]) is None


def test_only_normal_json_answers_are_kept() -> None:
    ok = {"choices": [{"finish_reason": "stop"}]}
    assert json_entry(json.dumps(ok).encode(), embeddings=False) is not None
    for bad in (
        {"choices": [{"finish_reason": "abort"}]},
        {"choices": [{"finish_reason": "stop"}, {"finish_reason": None}]},
        {"choices": []},
        {"error": {"message": "x"}},
    ):
        assert json_entry(json.dumps(bad).encode(), embeddings=False) is None
    assert json_entry(b"not json", embeddings=False) is None
    assert json_entry(b'{"data":[{"embedding":[0.1]}]}', embeddings=True) is not None


def test_memory_backend_keeps_its_byte_cap() -> None:
    async def scenario() -> None:
        cache = BoundedMemoryCache(3000, serializer=EntrySerializer(), timeout=None)

        async def present() -> list[str]:
            return [k for k in ("k0", "k1", "k2", "k3") if k in cache._cache]

        one_k = Entry("json", body=b"x" * 1000)  # ~1 KB serialised: two fit, three do not
        await cache.set("k0", one_k)
        await cache.set("k1", one_k)
        assert (await cache.get("k0")) is not None  # k0 is now the most recently used
        await cache.set("k2", one_k)
        assert await present() == ["k0", "k2"]
        await cache.set("k3", one_k)
        assert await present() == ["k2", "k3"]
        assert cache.total <= 3000
        await cache.set("k3", one_k)  # overwriting does not count twice
        assert cache.total == 2 * len(one_k.dumps())

    asyncio.run(scenario())


def test_store_failures_never_raise_and_are_counted() -> None:
    settings = GatewaySettings(
        auth_enabled=False,
        cache_backend="redis",
        cache_redis_url="redis://127.0.0.1:1/0",  # nothing listens on port 1
        cache_timeout_ms=200,
    )

    async def scenario() -> None:
        store = CacheStore(settings)
        assert await store.get("k") is None
        assert await store.set("k", Entry("json", body=b"{}")) is False
        assert await store.acquire("k:lock", "t", 1.0) is None
        assert await store.ping() is False
        await store.close()

    asyncio.run(scenario())


def test_memory_backend_needs_one_worker() -> None:
    with pytest.raises(ValidationError, match="cache_backend: memory"):
        GatewaySettings(auth_enabled=False, cache_backend="memory", workers=2)
    GatewaySettings(auth_enabled=False, cache_backend="memory", workers=1)
    with pytest.raises(ValidationError, match="cache_redis_url"):
        GatewaySettings(auth_enabled=False, cache_redis_url="http://x")
