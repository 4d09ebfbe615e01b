"""In-process checks of the simulator's parts: tokenizer, schemas, roofline, scheduler."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from inferstack.sim.app import create_app
from inferstack.sim.engine import FixedEngine, RooflineEngine, SimRequest
from inferstack.sim.metrics import Hist, SimMetrics, build_1_2_5_buckets
from inferstack.sim.profiles import CostModel, ProfileError, build_profile
from inferstack.sim.settings import SettingsError, SimSettings, load_settings
from inferstack.sim.tokens import (
    GEN_PIECES,
    Tokenizer,
    generate_piece_ids,
    natural_length,
    tool_arguments,
)


def test_tokenizer_round_trip_and_stability() -> None:
    text = "Internationalization of\n<|im_start|>tokens, 2024-05-17: ok?!  \n\nDone_now"
    tok = Tokenizer()
    pieces = tok.pieces(text)
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces if not p.startswith("<|")) <= 8
    assert "<|im_start|>" in pieces
    ids = tok.encode(text)
    assert ids == Tokenizer().encode(text)  # stable across instances
    assert tok.decode(ids) == text
    assert tok.encode("", add_bos=True) == [tok.bos_id]
    assert tok.decode([10**9 % tok.vocab_size]) != ""


def test_generated_text_is_seeded() -> None:
    def first(seed: int, n: int = 50) -> list[int]:
        gen = generate_piece_ids(seed)
        return [next(gen) for _ in range(n)]

    assert first(1) == first(1) != first(2)
    assert GEN_PIECES[first(1)[0]][0] != " "  # a response starts without a space
    lengths = {natural_length(s) for s in range(200)}
    assert min(lengths) >= 16 and max(lengths) <= 256 and len(lengths) > 50


def test_tool_arguments_follow_schema() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "mode": {"enum": ["a", "b"]},
            "fixed": {"const": 42},
            "opt": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 5, "maximum": 6}]},
            "merged": {"allOf": [{"properties": {"p": {"type": "boolean"}}}]},
            "points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2},
            "short": {"type": "string", "maxLength": 3},
            "nothing": {"type": "null"},
        },
    }
    args = json.loads(tool_arguments(schema, seed=5))
    assert args == json.loads(tool_arguments(schema, seed=5))
    assert args["when"].endswith("Z")
    assert args["mode"] in ("a", "b")
    assert args["fixed"] == 42
    assert 5 <= args["opt"] <= 6
    assert isinstance(args["merged"]["p"], bool)
    assert 1 <= len(args["points"]) <= 2 and all(isinstance(p["x"], int) for p in args["points"])
    assert len(args["short"]) <= 3
    assert args["nothing"] is None
    assert tool_arguments(None, 1) == "{}"
    assert ", " in tool_arguments(schema, 5)  # vLLM's json.dumps spacing


def test_cost_model_shape() -> None:
    llama = CostModel(build_profile("llama-3.1-8b-h100"))
    assert llama.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    expected = (81559 * 2**20 * 0.9 - 8.03e9 * 2 - 2.5 * 2**30) // llama.kv_bytes_per_token
    assert abs(llama.kv_cache_tokens() - expected) < 16
    steps = [llama.decode_step_seconds(b, 1024) for b in (1, 8, 64, 256)]
    assert steps == sorted(steps)
    assert (
        llama.prefill_seconds(2000) > llama.prefill_seconds(1000) > llama.decode_step_seconds(1, 0)
    )
    assert llama.step_parts(1, 0, 1)["comm"] == 0
    qwen = CostModel(build_profile("qwen3-32b-2xa6000"))
    assert qwen.step_parts(1, 0, 1)["comm"] > 0  # tensor parallel over PCIe
    assert qwen.decode_step_seconds(1, 1024) > 5 * llama.decode_step_seconds(1, 1024)
    scaled = CostModel(build_profile("llama-3.1-8b-h100", {"time_scale": 0.1}))
    assert scaled.decode_step_seconds(1, 10) == pytest.approx(llama.decode_step_seconds(1, 10) / 10)


def test_invalid_profiles() -> None:
    with pytest.raises(ProfileError, match="KV cache"):
        build_profile("llama-3.1-8b-h100", {"hardware.gpu_memory_mib": 16000})
    with pytest.raises(ProfileError, match="divisible"):
        build_profile("llama-3.1-8b-h100", {"engine.tensor_parallel_size": 3})
    with pytest.raises(ProfileError, match="roofline"):
        build_profile("instant", {"mode": "roofline"})
    with pytest.raises(ProfileError, match=r"ambiguous|unknown"):
        build_profile("instant", {"bogus": "x"})


def test_settings_precedence_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSTACK_SIM_PORT", "9001")
    monkeypatch.setenv("INFERSTACK_SIM_OVERRIDES", '{"engine.max_num_seqs": 3}')
    settings, profile = load_settings(port=None, max_model_len=2048)
    assert settings.port == 9001 and profile.engine.max_num_seqs == 3
    assert profile.engine.max_model_len == 2048
    settings, _ = load_settings(port=9002)
    assert settings.port == 9002
    with pytest.raises(SettingsError, match=r"^invalid value for itl_ms"):
        load_settings(itl_ms=-1)
    _, fixed = load_settings(profile="llama-3.1-8b-h100", itl_ms=5)
    assert fixed.mode == "fixed" and fixed.fixed.itl_ms == 5
    assert SimSettings(model="m").profile_overrides()["served_model_name"] == "m"


def test_hist_bucket_semantics() -> None:
    h = Hist([1, 2, 5])
    for v in (0.5, 1.0, 1.5, 5.0, 9.0):
        h.observe(v)
    h.observe_many(2.0, 3)
    assert h.cumulative() == [("1.0", 2.0), ("2.0", 6.0), ("5.0", 7.0), ("+Inf", 8.0)]
    assert h.count == 8 and h.sum == pytest.approx(23.0)
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]


def _roofline(**overrides: Any) -> RooflineEngine:
    profile = build_profile("llama-3.1-8b-h100", overrides)
    return RooflineEngine(profile, SimMetrics(profile, 0, process_metrics=False))


def _req(prompt: int, target: int) -> SimRequest:
    return SimRequest(
        prompt_tokens=prompt, target=target, finish_reason="length", max_tokens=target
    )


def test_chunked_prefill_respects_budget() -> None:
    eng = _roofline(max_num_batched_tokens=8, max_num_seqs=2)
    a, b, c = _req(20, 2), _req(4, 2), _req(4, 2)
    for r in (a, b, c):
        eng.waiting.append(r)
    batches = []
    t = 0.0
    while a.num_output < 1:
        batch = eng.schedule(t)
        batches.append([(r is a, n) for r, n in batch])
        assert sum(n for _, n in batch) <= 8
        eng.complete(batch, t)
        t += 1
    # a: 8 + 8 + 4; b rides along once a leaves room; c waits for max_num_seqs.
    assert batches[0] == [(True, 8)]
    assert batches[2][0] == (True, 4) and batches[2][1] == (False, 4)
    assert c.state == 0 and len(eng.running) == 2


def test_preemption_picks_most_recent_and_recomputes() -> None:
    eng = _roofline(kv_cache_tokens=64, max_model_len=64, max_num_seqs=4)
    first, second = _req(32, 10), _req(32, 10)
    eng.waiting.extend([first, second])
    t = 0.0
    batch = eng.schedule(t)  # both prefill: 2 blocks each, cache full
    eng.complete(batch, t)
    assert eng.free_blocks == 0 and first.num_output == second.num_output == 1
    batch = eng.schedule(t + 1)  # first needs a third block: second is preempted
    assert [r for r, _ in batch] == [first]
    assert second.state == 0 and eng.waiting[0] is second and second.num_computed == 0
    assert eng.metrics.preemptions == 1
    while not first.done:
        eng.complete(eng.schedule(t), t)
    while not second.done:
        eng.complete(eng.schedule(t), t)
    assert second.num_output == 10 and eng.free_blocks == 4 and eng.used_blocks == 0


async def test_fixed_engine_deadlines() -> None:
    profile = build_profile("instant", {"fixed.ttft_ms": 30, "fixed.itl_ms": 10})
    eng = FixedEngine(profile, SimMetrics(profile, 0, process_metrics=False))
    req = _req(5, 6)
    eng.submit(req)
    start = time.monotonic()
    stamps = []
    while (await eng.next_token(req)) >= 0:
        stamps.append(time.monotonic() - start)
    assert len(stamps) == 6
    assert stamps[0] == pytest.approx(0.030, abs=0.006)
    assert stamps[-1] == pytest.approx(0.080, abs=0.006)
    assert eng.num_running == 0 and req.done


async def test_create_app_in_process() -> None:
    app = create_app(SimSettings(), build_profile("instant"))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["data"][0]["id"] == "inferstack/sim-instant"
