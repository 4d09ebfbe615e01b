"""Result block, datasets, arrivals, sweep rules, chart points (in process, no Locust)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from inferstack.loadtest.arrivals import arrival_times, interleave, split_weighted
from inferstack.loadtest.bodies import base_url, request_body
from inferstack.loadtest.datasets import (
    DatasetError,
    Sample,
    length_range,
    prompt_file_samples,
    random_samples,
    sharegpt_samples,
)
from inferstack.loadtest.metrics import RequestRecord, summarize
from inferstack.loadtest.resultblock import result_block
from inferstack.loadtest.sweep import LevelOutcome, SweepRules, judge, levels, recommendation
from inferstack.loadtest.timeline import windows

# vLLM's labels in vLLM's order (vllm/benchmarks/serve.py), for a run with a concurrency
# limit, a finite request rate and goodput SLOs.
VLLM_LABELS = [
    "Successful requests:",
    "Failed requests:",
    "Maximum request concurrency:",
    "Request rate configured (RPS):",
    "Benchmark duration (s):",
    "Total input tokens:",
    "Total generated tokens:",
    "Request throughput (req/s):",
    "Request goodput (req/s):",
    "Output token throughput (tok/s):",
    "Peak output token throughput (tok/s):",
    "Peak concurrent requests:",
    "Total token throughput (tok/s):",
    "Mean TTFT (ms):",
    "Median TTFT (ms):",
    "P99 TTFT (ms):",
    "Mean TPOT (ms):",
    "Median TPOT (ms):",
    "P99 TPOT (ms):",
    "Mean ITL (ms):",
    "Median ITL (ms):",
    "P99 ITL (ms):",
]


def _metrics() -> dict:
    r = RequestRecord(0, 0.0, True, 0.1, 0.3, [0.1, 0.1], 3, 12, True)
    return summarize([r], 1.0, goodput={"ttft": 200}, percentiles=[50, 99])


def test_result_block_has_vllms_labels_order_and_layout() -> None:
    text = result_block(
        _metrics(),
        max_concurrency=8,
        request_rate=4.0,
        goodput=True,
        percentile_metrics=["ttft", "tpot", "itl"],
    )
    lines = text.splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    assert "---------------Time to First Token----------------" in lines
    assert "-----Time per Output Token (excl. 1st token)------" in lines
    assert "---------------Inter-token Latency----------------" in lines
    labels = [line[:40].rstrip() for line in lines if line[:1] not in "=-"]
    assert labels == VLLM_LABELS
    for line in lines:
        if line[:1] not in "=-":
            assert line[40] == " " and len(line) >= 51  # {:<40} {:<10}
    assert "Successful requests:                     1         " in lines
    assert "Mean TTFT (ms):                          100.00    " in lines
    assert "Peak concurrent requests:                1.00      " in lines


def test_result_block_omits_what_vllm_omits_and_can_withhold() -> None:
    text = result_block(_metrics(), percentile_metrics=["ttft", "e2el"])
    assert "Maximum request concurrency" not in text
    assert "Request rate configured" not in text
    assert "Request goodput" not in text
    assert (
        "Mean E2EL (ms):" in text and "----------------End-to-end Latency----------------" in text
    )
    held = result_block(_metrics(), withheld="the load generator saturated")
    assert "Mean TTFT" not in held and held.count("withheld: the load generator saturated") == 4
    assert "Output token throughput (tok/s):" in held


def test_random_dataset_lengths_follow_the_range_ratio() -> None:
    samples = random_samples(300, input_len=100, output_len=50, range_ratio=0.2, seed=1)
    assert len({s.prompt for s in samples}) == 300  # no shared prefixes to cache
    assert all(80 <= s.prompt_len <= 120 and 40 <= s.output_len <= 60 for s in samples)
    assert all(len(s.prompt.split()) == s.prompt_len for s in samples)
    assert max(s.prompt_len for s in samples) - min(s.prompt_len for s in samples) > 20
    fixed = random_samples(5, input_len=10, output_len=7, seed=1)
    assert {(s.prompt_len, s.output_len) for s in fixed} == {(10, 7)}
    assert random_samples(5, 10, 7, seed=1) == fixed
    assert length_range(10, 0.25) == (7, 13)
    with pytest.raises(DatasetError):
        random_samples(1, 10, 7, range_ratio=1.0)


def test_sharegpt_uses_first_turn_and_vllm_filters(tmp_path: Path) -> None:
    long_answer = " ".join(["word"] * 30)
    data = [
        {
            "conversations": [
                {"from": "human", "value": "Tell me about cats and dogs please"},
                {"from": "gpt", "value": long_answer},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "Hi"},  # prompt under 4 tokens
                {"from": "gpt", "value": long_answer},
            ]
        },
        {"conversations": [{"from": "human", "value": "only one turn here at all"}]},
        {
            "conversations": [
                {"from": "human", "value": " ".join(["x"] * 1100)},  # too long
                {"from": "gpt", "value": long_answer},
            ]
        },
        {"id": "no conversations"},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    samples = sharegpt_samples(path, 3)
    assert [s.prompt for s in samples] == ["Tell me about cats and dogs please"] * 3
    assert samples[0].output_len == 30
    assert sharegpt_samples(path, 1, output_len=64)[0].output_len == 64
    path.write_text("{}")
    with pytest.raises(DatasetError, match="list"):
        sharegpt_samples(path, 1)


def test_prompt_files(tmp_path: Path) -> None:
    txt = tmp_path / "prompts.txt"
    txt.write_text("first prompt\n\nsecond prompt here\n")
    samples = prompt_file_samples(txt, 3, output_len=32)
    assert [s.prompt for s in samples] == ["first prompt", "second prompt here", "first prompt"]
    assert {s.output_len for s in samples} == {32}
    jl = tmp_path / "prompts.jsonl"
    jl.write_text(
        '{"prompt": "a b c", "max_tokens": 5}\n'
        '{"messages": [{"role": "system", "content": "be brief"}, '
        '{"role": "user", "content": "hi"}]}\n'
    )
    a, b = prompt_file_samples(jl, 2, output_len=9)
    assert (a.prompt, a.output_len, a.messages) == ("a b c", 5, None)
    assert b.messages is not None and b.output_len == 9 and b.messages[1]["content"] == "hi"
    jl.write_text('{"text": 1}\n')
    with pytest.raises(DatasetError, match=":1:"):
        prompt_file_samples(jl, 1, 9)


def test_request_bodies_are_what_vllm_bench_sends() -> None:
    s = Sample("hello", 1, 16)
    chat = json.loads(request_body(s, endpoint="chat", model="m", ignore_eos=True))
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "max_completion_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    comp = json.loads(request_body(s, endpoint="completions", model="m", extra_body={"seed": 3}))
    assert comp == {
        "model": "m",
        "prompt": "hello",
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 3,
    }
    assert base_url("https://edge.example/v1/") == "https://edge.example"


def test_arrivals_follow_rate_and_burstiness() -> None:
    n, rate = 4000, 20.0
    for burstiness in (0.25, 1.0, 4.0):
        times = arrival_times(n, rate, burstiness, seed=7)
        assert times[-1] == pytest.approx(n / rate)  # vLLM's rescaling
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        cv2 = statistics.pvariance(gaps) / statistics.fmean(gaps) ** 2
        assert cv2 == pytest.approx(1 / burstiness, rel=0.15)  # gamma: CV^2 = 1/shape
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]
    assert arrival_times(4, 2.0, math.inf) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert arrival_times(5, 3.0, seed=1) == arrival_times(5, 3.0, seed=1)


def test_work_split_over_generator_processes() -> None:
    assert split_weighted({"a": 3, "b": 1}, 10) == {"a": 8, "b": 2}
    assert sum(split_weighted({"a": 1, "b": 1, "c": 1}, 10).values()) == 10
    order = interleave({"a": 2, "b": 1}, 6)
    assert order.count("a") == 4 and order.count("b") == 2
    assert order[:3] != ["a", "a", "b"] or order[3:] == ["a", "a", "b"]


def _level(c: int, ok: int, failed: int, p99_ttft: float, tput: float) -> LevelOutcome:
    return LevelOutcome(c, ok, failed, p99_ttft, tput)


def test_sweep_rules() -> None:
    rules = SweepRules(ttft_p99_slo_ms=1000, max_concurrency=64)
    assert levels(rules) == [1, 2, 4, 8, 16, 32, 64]
    one = _level(1, 10, 0, 100, 100.0)
    assert judge(one, None, rules).passed
    two = _level(2, 20, 0, 120, 190.0)
    v = judge(two, one, rules)
    assert v.passed and v.gain == pytest.approx(0.9)
    flat = judge(_level(4, 40, 0, 150, 220.0), two, rules)
    assert not flat.passed and "gain" in flat.reasons[0]
    slow = judge(_level(4, 40, 0, 1500, 380.0), two, rules)
    assert not slow.passed and "TTFT p99 1500 ms > SLO 1000 ms" in slow.reasons
    failing = judge(_level(4, 37, 3, 150, 380.0), two, rules)
    assert not failing.passed and failing.reasons == ["success 92.5% < 95%"]
    sat = LevelOutcome(4, 40, 0, 150, 380.0, client_saturated=True)
    assert not judge(sat, two, rules).passed
    assert recommendation(64) == (44, 51)
    assert recommendation(1) == (1, 1)
    assert recommendation(0) is None


def test_windows_of_a_single_run() -> None:
    # two users, one request per second each: 10 token events from 0.05 s to 0.95 s
    records = [
        RequestRecord(i, float(i // 2), True, 0.05, 0.95, [0.1] * 9, 10, 5, True) for i in range(8)
    ]
    points = windows(records, duration=4.0, count=4)
    assert [p["label"] for p in points] == ["0-1s", "1-2s", "2-3s", "3-4s"]
    for p in points:
        assert p["concurrency"] == pytest.approx(1.9)
        assert p["request_rate"] == pytest.approx(2.0)
        assert p["output_throughput"] == pytest.approx(20.0)
        assert p["per_user"] == pytest.approx(20.0 / 1.9)
        assert p["p99_ttft_ms"] == pytest.approx(50.0)
        assert p["error_rate"] == 0.0
