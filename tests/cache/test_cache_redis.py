"""The response cache with real Redis on loopback and Gunicorn with 2 workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest

from tests.cache.conftest import CacheStack, chat, engine_requests, post, sse_events
from tests.procs import (
    OTHER_KEY,
    TEST_KEY,
    Proc,
    Processes,
    metric_total,
    redis_command,
    wait_until,
)


def test_miss_then_hit_is_byte_identical(cache_stack: CacheStack) -> None:
    body = chat()
    before = cache_stack.engine_requests()
    first = cache_stack.post(body)
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS"
    # Several more from whichever worker accepts them: none reaches the engine.
    for _ in range(4):
        again = cache_stack.post(body)
        assert again.status_code == 200
        assert again.headers["x-cache"] == "HIT"
        assert again.content == first.content
        assert again.headers["content-type"] == "application/json"
    assert cache_stack.engine_requests() == before + 1


def test_equivalent_spellings_share_an_entry(cache_stack: CacheStack) -> None:
    body = chat()
    assert cache_stack.post(body).headers["x-cache"] == "MISS"
    respelled = {**body, "temperature": 0.0, "stream": False, "user": "someone-else"}
    assert cache_stack.post(dict(reversed(list(respelled.items())))).headers["x-cache"] == "HIT"


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0.7},  # sampled, no seed
        {},  # engine default temperature, no seed
        {"temperature": 0, "n": 2},  # several choices
    ],
    ids=["sampled", "default-temperature", "n2"],
)
def test_nondeterministic_requests_bypass(
    cache_stack: CacheStack, fields: dict[str, object]
) -> None:
    body = chat()
    del body["temperature"]
    body.update(fields)
    before = cache_stack.engine_requests()
    for _ in range(2):
        r = cache_stack.post(body)
        assert r.status_code == 200
        assert r.headers["x-cache"] == "BYPASS"
    # vLLM counts finished sequences: n of them per request
    assert cache_stack.engine_requests() == before + 2 * int(fields.get("n", 1))  # type: ignore[call-overload]


def test_explicit_seed_is_cacheable(cache_stack: CacheStack) -> None:
    body = chat(temperature=0.9, seed=1234)
    assert cache_stack.post(body).headers["x-cache"] == "MISS"
    assert cache_stack.post(body).headers["x-cache"] == "HIT"
    other_seed = {**body, "seed": 4321}
    assert cache_stack.post(other_seed).headers["x-cache"] == "MISS"


def test_completions_and_embeddings_are_cached(cache_stack: CacheStack) -> None:
    completion = {"model": "sim-model", "prompt": chat()["messages"][0]["content"], "seed": 7}
    embedding = {"model": "sim-model", "input": completion["prompt"]}
    for body, path in ((completion, "/v1/completions"), (embedding, "/v1/embeddings")):
        first = cache_stack.post(body, path=path)
        second = cache_stack.post(body, path=path)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.content == second.content


def test_client_cache_control(cache_stack: CacheStack) -> None:
    body = chat()
    cache_stack.post(body)
    before = cache_stack.engine_requests()
    # no-cache: the engine answers (lookup skipped) and the entry is refreshed
    refreshed = cache_stack.post(body, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "BYPASS"
    assert cache_stack.engine_requests() == before + 1
    hit = cache_stack.post(body)
    assert hit.headers["x-cache"] == "HIT"
    assert json.loads(hit.content)["id"] == json.loads(refreshed.content)["id"]
    # no-store: an existing entry still answers, a new answer is not kept
    assert cache_stack.post(body, headers={"Cache-Control": "no-store"}).headers["x-cache"] == "HIT"
    fresh = chat()
    for _ in range(2):
        r = cache_stack.post(fresh, headers={"Cache-Control": "no-store"})
        assert r.headers["x-cache"] == "MISS"
    assert cache_stack.post(fresh).headers["x-cache"] == "MISS"


def test_tenants_never_see_each_others_entries(cache_stack: CacheStack) -> None:
    body = chat()
    a = cache_stack.post(body, key=TEST_KEY)
    assert a.headers["x-cache"] == "MISS"
    before = cache_stack.engine_requests()
    b = cache_stack.post(body, key=OTHER_KEY)
    assert b.headers["x-cache"] == "MISS"
    assert cache_stack.engine_requests() == before + 1
    assert json.loads(b.content)["id"] != json.loads(a.content)["id"]
    assert cache_stack.post(body, key=OTHER_KEY).content == b.content
    assert cache_stack.post(body, key=TEST_KEY).content == a.content


def test_streaming_replay_equals_the_live_stream(cache_stack: CacheStack) -> None:
    body = chat(stream=True, max_tokens=20)
    live = cache_stack.post(body)
    assert live.headers["x-cache"] == "MISS"
    assert live.headers["content-type"].startswith("text/event-stream")
    live_events = sse_events(live.content)
    assert live_events[-1] == b"data: [DONE]\n\n"
    assert not any(b'"choices":[]' in e for e in live_events), "usage chunk not asked for"
    replay = cache_stack.post(body)
    assert replay.headers["x-cache"] == "HIT"
    assert replay.headers["content-type"] == live.headers["content-type"]
    assert replay.headers["x-accel-buffering"] == "no"
    assert sse_events(replay.content) == live_events

    # The same entry answers a client that asks for usage: the usage chunk is there,
    # right before [DONE], and it counts the tokens the live stream had.
    with_usage = {**body, "stream_options": {"include_usage": True}}
    replay_usage = cache_stack.post(with_usage)
    assert replay_usage.headers["x-cache"] == "HIT"
    events = sse_events(replay_usage.content)
    assert events[:-2] == live_events[:-1]
    usage = json.loads(events[-2].removeprefix(b"data: "))
    assert usage["choices"] == []
    content_events = [
        e for e in live_events[:-1] if b'"content":"' in e and b'"content":""' not in e
    ]
    assert usage["usage"]["completion_tokens"] == len(content_events)
    assert events[-1] == b"data: [DONE]\n\n"


def test_streamed_miss_with_usage_answers_clients_without(cache_stack: CacheStack) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    live = sse_events(cache_stack.post(body).content)
    assert b'"choices":[]' in live[-2]
    plain = {k: v for k, v in body.items() if k != "stream_options"}
    replay = cache_stack.post(plain)
    assert replay.headers["x-cache"] == "HIT"
    assert sse_events(replay.content) == live[:-2] + live[-1:]


def test_stream_and_non_stream_are_separate_entries(cache_stack: CacheStack) -> None:
    body = chat()
    assert cache_stack.post(body).headers["x-cache"] == "MISS"
    streamed = cache_stack.post({**body, "stream": True})
    assert streamed.headers["x-cache"] == "MISS"
    assert streamed.content.endswith(b"data: [DONE]\n\n")


def test_engine_errors_are_not_cached(cache_stack: CacheStack) -> None:
    body = chat(max_tokens=9000)  # over the simulator's 8192-token context: its 400
    for _ in range(2):
        r = cache_stack.post(body)
        assert r.status_code == 400
        assert r.headers["x-cache"] == "MISS"


def test_cache_metrics(cache_stack: CacheStack) -> None:
    names = ("hit", "miss", "bypass")
    before = {n: cache_stack.metric("inferstack_cache_requests_total", result=n) for n in names}
    stored = cache_stack.metric("inferstack_cache_stored_bytes_total")
    body = chat()
    first = cache_stack.post(body)
    cache_stack.post(body)
    cache_stack.post(chat(temperature=1.0))
    after = {n: cache_stack.metric("inferstack_cache_requests_total", result=n) for n in names}
    assert {n: after[n] - before[n] for n in names} == {"hit": 1, "miss": 1, "bypass": 1}
    assert cache_stack.metric("inferstack_cache_stored_bytes_total") >= stored + len(first.content)
    # the entry is in Redis, under the tenant's namespace, with the TTL
    keys = redis_command(cache_stack.redis.port, "KEYS", "inferstack:cache:v1:t:alpha:*")
    assert keys.startswith(b"*") and keys != b"*0\r\n"


def _paced(procs: Processes, ttft_ms: int) -> tuple[Proc, Proc]:
    """A paced simulator (fixed TTFT, 10 ms per token) behind 2 workers caching in Redis."""
    redis = procs.redis()
    sim = procs.sim("--ttft-ms", str(ttft_ms), "--itl-ms", "10")
    gw = procs.gateway(
        [sim],
        workers=2,
        env={"INFERSTACK_CACHE_BACKEND": "redis", "INFERSTACK_CACHE_REDIS_URL": redis.url},
    )
    return sim, gw


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_concurrent_identical_requests_make_one_upstream_call(
    procs: Processes, stream: bool
) -> None:
    sim, gw = _paced(procs, ttft_ms=400)
    body = json.dumps(chat(stream=stream))

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        gw.url + "/v1/chat/completions",
                        content=body,
                        headers={"Authorization": f"Bearer {TEST_KEY}"},
                    )
                    for _ in range(50)
                )
            )

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 50
    contents = {r.content for r in answers}
    assert len(contents) == 1, [
        (r.headers["x-cache"], r.content[:60], len(r.content)) for r in answers
    ]
    results = sorted(r.headers["x-cache"] for r in answers)
    assert results.count("MISS") == 1, results
    assert engine_requests(sim) == 1
    assert metric_total(gw.url, "inferstack_cache_singleflight_joins_total") >= 1


def test_client_gone_mid_stream_is_not_cached(procs: Processes) -> None:
    _, gw = _paced(procs, ttft_ms=20)
    body = chat(stream=True, max_tokens=200, ignore_eos=True)
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            content=json.dumps(body),
            headers={"Authorization": f"Bearer {TEST_KEY}"},
        ) as r,
    ):
        assert r.headers["x-cache"] == "MISS"
        for _ in r.iter_bytes():
            break  # leave after the first chunk
    assert wait_until(
        lambda: metric_total(gw.url, "inferstack_client_disconnects_total") >= 1, timeout=5
    )
    again = post(gw.url, body)
    assert again.headers["x-cache"] == "MISS"
    assert again.content.endswith(b"data: [DONE]\n\n")
    assert post(gw.url, body).headers["x-cache"] == "HIT"


def test_redis_stopped_mid_run_every_request_succeeds(procs: Processes) -> None:
    redis = procs.redis()
    sim = procs.sim()
    gw = procs.gateway(
        [sim],
        workers=2,
        env={
            "INFERSTACK_CACHE_BACKEND": "redis",
            "INFERSTACK_CACHE_REDIS_URL": redis.url,
            "INFERSTACK_CACHE_RETRY_S": "0.2",
        },
    )
    body = chat()
    assert post(gw.url, body).headers["x-cache"] == "MISS"
    assert post(gw.url, body).headers["x-cache"] == "HIT"
    redis.stop()
    statuses = []
    for i in range(30):
        r = post(gw.url, body if i % 2 else chat(stream=bool(i % 3)))
        statuses.append(r.status_code)
        assert r.headers["x-cache"] == "MISS"
    assert statuses == [200] * 30
    assert metric_total(gw.url, "inferstack_cache_errors_total") >= 1
    assert metric_total(gw.url, "inferstack_cache_errors_total", op="get") >= 1

    # Redis back on the same port: the cache works again once the retry interval has passed.
    procs.redis(port=redis.port)
    post(gw.url, body)
    assert wait_until(lambda: post(gw.url, body).headers["x-cache"] == "HIT", timeout=10)


def test_redis_that_stops_answering_is_passed_through(procs: Processes) -> None:
    """A hung Redis (SIGSTOP: connections open, no answers) costs a timeout, not a failure."""
    redis = procs.redis()
    sim = procs.sim()
    gw = procs.gateway(
        [sim],
        workers=2,
        env={"INFERSTACK_CACHE_BACKEND": "redis", "INFERSTACK_CACHE_REDIS_URL": redis.url},
    )
    body = chat()
    post(gw.url, body)
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        answers = [post(gw.url, body if i % 2 else chat()) for i in range(10)]
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    assert [r.status_code for r in answers] == [200] * 10
    assert {r.headers["x-cache"] for r in answers} == {"MISS"}
    assert metric_total(gw.url, "inferstack_cache_errors_total") >= 2


def test_shared_namespace_answers_every_key(procs: Processes) -> None:
    redis = procs.redis()
    sim = procs.sim()
    env = {
        "INFERSTACK_CACHE_BACKEND": "redis",
        "INFERSTACK_CACHE_REDIS_URL": redis.url,
        "INFERSTACK_CACHE_NAMESPACE": "shared",
    }
    gw = procs.gateway([sim], workers=2, env=env)
    body = chat()
    a = post(gw.url, body, key=TEST_KEY)
    b = post(gw.url, body, key=OTHER_KEY)
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("MISS", "HIT")
    assert a.content == b.content


def test_memory_backend_in_one_worker(procs: Processes) -> None:
    sim = procs.sim()
    gw = procs.gateway([sim], workers=1, env={"INFERSTACK_CACHE_BACKEND": "memory"})
    for body in (chat(), chat(stream=True)):
        first, second = post(gw.url, body), post(gw.url, body)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.content == second.content
    assert engine_requests(sim) == 2


def test_cache_off_adds_nothing(procs: Processes) -> None:
    sim = procs.sim()
    gw = procs.gateway([sim], workers=1)
    body = chat()
    answers = [post(gw.url, body) for _ in range(2)]
    assert all("x-cache" not in r.headers for r in answers)
    assert engine_requests(sim) == 2
    assert "inferstack_cache_requests_total" not in httpx.get(gw.url + "/metrics").text
