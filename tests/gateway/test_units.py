"""Unit tests of the gateway's pure pieces (no processes)."""

from __future__ import annotations

import asyncio
import collections
import pathlib
import subprocess
import sys

import orjson
import pytest

from inferstack.gateway.auth import KeyStore, hash_key
from inferstack.gateway.backends import BackendPool
from inferstack.gateway.context import RequestContext
from inferstack.gateway.errors import APIError
from inferstack.gateway.loadreport import PollerLock, engine_load
from inferstack.gateway.protocol import ChatCompletionRequest, CompletionRequest
from inferstack.gateway.proxy import with_usage_requested
from inferstack.gateway.settings import ApiKey, GatewaySettings
from inferstack.gateway.streaming import EventTracker


def _settings(**kw: object) -> GatewaySettings:
    base: dict[str, object] = {
        "auth_enabled": False,
        "workers": 1,
        "backends": ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"],
    }
    return GatewaySettings(**{**base, **kw})  # type: ignore[arg-type]


def _pool(**kw: object) -> BackendPool:
    pool = BackendPool(_settings(**kw))
    for b in pool.backends:
        pool.probe_result(b, True, [{"id": "m"}])
    return pool


# ----- usage injection -----
def test_usage_is_spliced_in_when_stream_options_absent() -> None:
    body = b'{"model":"m","prompt":"x","stream":true}  \n'
    req = CompletionRequest.model_validate_json(body)
    out = with_usage_requested(body, req)
    assert orjson.loads(out) == {
        "model": "m",
        "prompt": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_usage_is_set_inside_existing_stream_options() -> None:
    body = (
        b'{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":false,'
        b'"continuous_usage_stats":true}}'
    )
    req = CompletionRequest.model_validate_json(body)
    assert orjson.loads(with_usage_requested(body, req))["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }


# ----- SSE tracking -----
def _tracker(forward_usage: bool) -> EventTracker:
    return EventTracker(
        RequestContext(request_id="r", route="/v1/completions", model="m"), forward_usage
    )


def test_tracker_drops_injected_usage_chunk_and_keeps_done() -> None:
    t = _tracker(forward_usage=False)
    content = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    assert t.feed(content) == content
    assert t.feed(usage) is None
    assert t.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert t.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert t.done


def test_tracker_forwards_usage_when_asked() -> None:
    t = _tracker(forward_usage=True)
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
    assert t.feed(usage) == usage
    assert t.usage is not None and t.usage["completion_tokens"] == 1


def test_histogram_batch_matches_plain_observations() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from inferstack.gateway.metrics import HistogramBatch

    reg = CollectorRegistry()
    plain = Histogram("plain", "x", buckets=(0.01, 0.05, 0.1), registry=reg)
    batched = Histogram("batched", "x", buckets=(0.01, 0.05, 0.1), registry=reg)
    batch = HistogramBatch(batched)
    values = [0.001, 0.01, 0.0100001, 0.05, 0.07, 0.1, 3.0] * 50  # bounds included
    for v in values:
        plain.observe(v)
        batch.observe(v)
    batch.flush()

    def samples(name: str) -> list[tuple[str, float]]:
        fam = next(m for m in reg.collect() if m.name == name)
        return [
            (s.name.removeprefix(name) + str(s.labels), s.value)
            for s in fam.samples
            if not s.name.endswith("_created")
        ]

    got, want = dict(samples("batched")), dict(samples("plain"))
    assert got.pop("_sum{}") == pytest.approx(want.pop("_sum{}"))
    assert got == want  # every bucket and the count exactly


# ----- admission and routing -----
async def test_least_outstanding_routing() -> None:
    pool = _pool()
    a = await pool.acquire("m", "r")
    b = await pool.acquire("m", "r")
    c = await pool.acquire("m", "r")
    assert len({a.label, b.label, c.label}) == 3
    pool.release(b)
    assert (await pool.acquire("m", "r")) is b


async def test_ties_are_broken_at_random() -> None:
    """Idle engines are equally least loaded: successive single requests (acquire, release)
    land on all of them, not always on the first (what several gateways, each blind to the
    others' requests, would otherwise all pick at once)."""
    pool = _pool()
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(300):
        b = await pool.acquire("m", "r")
        seen[b.label] += 1
        pool.release(b)
    assert len(seen) == 3
    assert min(seen.values()) > 50, seen


async def test_affinity_is_stable_and_spreads() -> None:
    pool = _pool()
    homes = {}
    for i in range(60):
        first = await pool.acquire("m", "r", affinity=f"session-{i}")
        pool.release(first)
        again = await pool.acquire("m", "r", affinity=f"session-{i}")
        pool.release(again)
        assert first is again
        homes[i] = first.label
    assert len(set(homes.values())) == 3  # sessions spread over every backend
    # Ejecting one backend moves only its own sessions.
    gone = pool.backends[0]
    pool.record_failure(gone, fatal=True)
    for i, label in homes.items():
        b = await pool.acquire("m", "r", affinity=f"session-{i}")
        pool.release(b)
        if label != gone.label:
            assert b.label == label


async def test_full_pool_waits_then_429() -> None:
    pool = _pool(
        backends=["http://127.0.0.1:1"],
        backend_max_inflight=1,
        admission_wait_ms=50,
        retry_after_s=7,
    )
    await pool.acquire("m", "r")
    with pytest.raises(APIError) as exc:
        await pool.acquire("m", "r")
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "7"


async def test_waiter_gets_the_released_slot() -> None:
    pool = _pool(backends=["http://127.0.0.1:1"], backend_max_inflight=1, admission_wait_ms=2000)
    held = await pool.acquire("m", "r")
    waiter = asyncio.ensure_future(pool.acquire("m", "r"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    pool.release(held)
    assert (await asyncio.wait_for(waiter, 1)) is held


async def test_waiters_are_bounded() -> None:
    pool = _pool(
        backends=["http://127.0.0.1:1"],
        backend_max_inflight=1,
        admission_wait_ms=5000,
        admission_max_waiters=2,
    )
    await pool.acquire("m", "r")
    waiting = [asyncio.ensure_future(pool.acquire("m", "r")) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(APIError) as exc:
        await pool.acquire("m", "r")
    assert exc.value.status == 429
    for w in waiting:
        w.cancel()


async def test_no_healthy_backend_is_503() -> None:
    pool = _pool(backends=["http://127.0.0.1:1"])
    pool.record_failure(pool.backends[0], fatal=True)
    with pytest.raises(APIError) as exc:
        await pool.acquire("m", "r")
    assert exc.value.status == 503 and "Retry-After" in exc.value.headers


def test_5xx_streak_ejects_and_probe_readmits_after_eject_time() -> None:
    pool = _pool(backends=["http://127.0.0.1:1"], eject_after_failures=3, eject_s=0)
    b = pool.backends[0]
    pool.record_failure(b, fatal=False)
    pool.record_failure(b, fatal=False)
    assert b.healthy
    pool.record_failure(b, fatal=False)
    assert not b.healthy
    pool.probe_result(b, True, None)
    assert b.healthy and b.consecutive_failures == 0


def test_inflight_table_is_shared_across_forked_workers() -> None:
    """Counts written by a forked worker are seen by its siblings; a dead slot is cleared."""
    import os

    from inferstack.gateway import shared

    allocator = shared.SlotAllocator(shared.InflightTable(slots=4, columns=2))
    old = shared.TABLE, shared.SLOT
    try:
        shared.TABLE = allocator.table
        shared.SLOT = child_slot = allocator.take()
        pid = os.fork()
        if pid == 0:  # the "worker": three requests in flight on backend 1
            counter = shared.InflightCounter(1)
            for _ in range(3):
                counter.add(1)
            os._exit(0)
        os.waitpid(pid, 0)
        shared.SLOT = allocator.take()
        mine = shared.InflightCounter(1)
        mine.add(1)
        assert mine.mine == 1 and mine.total() == 4
        assert shared.InflightCounter(0).total() == 0
        assert child_slot is not None
        allocator.give_back(child_slot)
        assert mine.total() == 1
    finally:
        shared.TABLE, shared.SLOT = old


# ----- auth -----
def test_keys_are_checked_by_digest() -> None:
    store = KeyStore([ApiKey(id="a", sha256=hash_key("sk-1"))], enabled=True)
    assert store.authenticate("Bearer sk-1") == "a"
    for header in (None, "", "Bearer", "Basic sk-1", "Bearer sk-2"):
        with pytest.raises(APIError) as exc:
            store.authenticate(header)
        assert exc.value.status == 401


def test_plain_key_in_config_is_refused() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        ApiKey(id="a", sha256="sk-plain-key")


# ----- protocol -----
def test_chat_prompt_chars_counts_text_parts() -> None:
    req = ChatCompletionRequest.model_validate_json(
        orjson.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "abc"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "de"},
                            {"type": "image_url", "image_url": {"url": "x"}},
                        ],
                    },
                    {"role": "assistant", "content": None, "tool_calls": []},
                ],
            }
        )
    )
    assert req.prompt_chars() == 5


# ----- settings -----
@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"INFERSTACK_WORKERS": "zero"}, "INFERSTACK_WORKERS"),
        ({"INFERSTACK_BACKENDS": '["not a url"]'}, "backends.0.url"),
        ({"INFERSTACK_API_KEYS": "[]"}, "INFERSTACK_AUTH_ENABLED=false"),
        ({"INFERSTACK_CONFIG": "/nonexistent/gw.yaml"}, "/nonexistent/gw.yaml"),
    ],
)
def test_bad_setting_stops_startup_naming_it(env: dict[str, str], needle: str) -> None:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("INFERSTACK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "inferstack", "gateway", "--check"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_settings_file_is_read(tmp_path: object) -> None:
    import os
    from pathlib import Path

    cfg = Path(str(tmp_path)) / "gw.yaml"
    cfg.write_text("backends: ['http://10.0.0.1:8000']\nauth_enabled: false\nworkers: 3\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INFERSTACK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "inferstack", "gateway", "--check", "--config", str(cfg)],
        env={**clean, "INFERSTACK_WORKERS": "4"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert data["workers"] == 4  # the environment wins over the file
    assert data["backends"][0]["url"] == "http://10.0.0.1:8000"


async def test_routing_counts_what_engines_report_from_elsewhere() -> None:
    """Requests another gateway keeps on an engine (reported by the engine) count like this
    gateway's own: the next request goes to the engine with the least of both."""
    pool = _pool()
    a, b, c = pool.backends
    a.set_others(3)
    c.set_others(1)
    first = await pool.acquire("m", "r")
    assert first is b
    second = await pool.acquire("m", "r")  # b has 1 own, c has 1 from elsewhere: a tie
    assert second in (b, c)
    # the in-flight cap counts this gateway's requests only
    capped = _pool(backend_max_inflight=1)
    capped.backends[0].set_others(50)
    got = [await capped.acquire("m", "r") for _ in range(3)]
    assert {x.label for x in got} == {x.label for x in capped.backends}


def test_engine_load_sums_running_and_waiting_over_series() -> None:
    page = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 3.0
vllm:num_requests_running{engine="1",model_name="a"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 4.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0
vllm:num_requests_swapped 7.0
vllm:kv_cache_usage_perc 0.5
"""
    assert engine_load(page) == 9
    assert engine_load(b"vllm:num_requests_running 2\n") == 2
    assert engine_load(b"# no vLLM metrics here\nup 1\n") is None
    assert engine_load(b'vllm:num_requests_running{x="1"} not-a-number\n') is None


def test_one_worker_holds_the_poller_lock(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "poller.lock")
    first, second = PollerLock(path), PollerLock(path)
    assert first.acquire()
    assert first.acquire()  # held: still ours
    assert not second.acquire()
    first.release()
    assert second.acquire()
    assert PollerLock(None).acquire()  # a single process (no Gunicorn) always polls
