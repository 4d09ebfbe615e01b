"""vLLM OpenAI server surface of the simulator, checked with the official client."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import httpx
import openai
import pytest
from simproc import INSTANT_MODEL, SimServer, metric_value


@pytest.fixture(scope="module")
def client(instant_server: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=instant_server.url + "/v1", api_key="unused", max_retries=0)


def sse_events(resp: httpx.Response) -> list[Any]:
    events: list[Any] = []
    for line in resp.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


MESSAGES = [{"role": "user", "content": "Tell me about continuous batching."}]


def test_models_shape(instant_server: SimServer) -> None:
    body = httpx.get(instant_server.url + "/v1/models").json()
    assert body["object"] == "list"
    card = body["data"][0]
    assert card["id"] == INSTANT_MODEL
    assert card["object"] == "model"
    assert card["owned_by"] == "vllm"
    assert card["root"] == INSTANT_MODEL
    assert card["parent"] is None
    assert card["max_model_len"] == 8192
    assert card["permission"][0]["object"] == "model_permission"


def test_health_ping_version(instant_server: SimServer) -> None:
    health = httpx.get(instant_server.url + "/health")
    assert health.status_code == 200 and health.content == b""
    assert httpx.get(instant_server.url + "/ping").status_code == 200
    assert httpx.post(instant_server.url + "/ping").status_code == 200
    assert isinstance(httpx.get(instant_server.url + "/version").json()["version"], str)


def test_chat_non_stream(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=INSTANT_MODEL, messages=MESSAGES, max_tokens=40, extra_body={"ignore_eos": True}
    )
    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 40
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 40
    assert resp.usage.prompt_tokens > 5


def test_chat_stream_counts_match_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=INSTANT_MODEL,
        messages=MESSAGES,
        max_tokens=25,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert finish == ["length"]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens == len(content) == 25


def test_chat_stream_without_usage_and_done_marker(instant_server: SimServer) -> None:
    body = {"model": INSTANT_MODEL, "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", instant_server.url + "/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


def test_continuous_usage_stats(instant_server: SimServer) -> None:
    body = {
        "model": INSTANT_MODEL,
        "messages": MESSAGES,
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with httpx.stream("POST", instant_server.url + "/v1/chat/completions", json=body) as resp:
        chunks = sse_events(resp)[:-1]
    assert all("usage" in c for c in chunks)
    progress = [c["usage"]["completion_tokens"] for c in chunks if c["choices"]]
    assert progress == [0, 1, 2, 3, 4, 5, 6]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_completions_stream_and_batch(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=INSTANT_MODEL, prompt=["one", "two words"], max_tokens=7, n=2
    )
    assert resp.id.startswith("cmpl-")
    assert sorted(c.index for c in resp.choices) == [0, 1, 2, 3]
    assert resp.usage is not None and resp.usage.completion_tokens == sum(
        7 if c.finish_reason == "length" else 0 for c in resp.choices
    )
    stream = client.completions.create(
        model=INSTANT_MODEL,
        prompt=[1, 2, 3, 4],
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts = [c for c in chunks if c.choices and c.choices[0].text]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 4
    assert chunks[-1].usage.completion_tokens == len(texts) == 9


def test_completions_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=INSTANT_MODEL, prompt="hello")
    assert resp.usage is not None and resp.usage.completion_tokens == 16


def test_determinism_and_seed(client: openai.OpenAI) -> None:
    def text(seed: int | None) -> str:
        r = client.chat.completions.create(
            model=INSTANT_MODEL, messages=MESSAGES, max_tokens=30, seed=seed
        )
        return r.choices[0].message.content or ""

    assert text(1) == text(1)
    assert text(None) == text(None)
    assert text(1) != text(2)


def test_natural_eos_and_ignore_eos(client: openai.OpenAI) -> None:
    lengths = set()
    for seed in range(6):
        r = client.chat.completions.create(
            model=INSTANT_MODEL, messages=MESSAGES, max_tokens=1000, seed=seed
        )
        assert r.choices[0].finish_reason == "stop"
        assert r.usage is not None
        assert 16 <= r.usage.completion_tokens <= 256
        lengths.add(r.usage.completion_tokens)
    assert len(lengths) > 1
    r = client.chat.completions.create(
        model=INSTANT_MODEL,
        messages=MESSAGES,
        max_tokens=300,
        seed=0,
        extra_body={"ignore_eos": True},
    )
    assert r.usage is not None and r.usage.completion_tokens == 300
    assert r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(
        model=INSTANT_MODEL, messages=MESSAGES, max_completion_tokens=3
    )
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_min_tokens_and_stop_string(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=INSTANT_MODEL, messages=MESSAGES, max_tokens=400, extra_body={"min_tokens": 300}
    )
    assert r.usage is not None and r.usage.completion_tokens >= 300
    r = client.chat.completions.create(
        model=INSTANT_MODEL, messages=MESSAGES, max_tokens=200, stop=["."], seed=3
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert "." not in (choice.message.content or "")
    assert choice.model_extra is not None and choice.model_extra["stop_reason"] == "."


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=INSTANT_MODEL, messages=MESSAGES, max_tokens=10, n=3, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 3
    assert r.usage is not None and r.usage.completion_tokens == 30


TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "threshold": {"type": "number"},
        "alerts": {"type": "boolean"},
        "location": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
        },
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["city", "unit"],
}
TOOLS = [
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": TOOL_SCHEMA},
    },
]


def check_weather_args(args: dict[str, Any]) -> None:
    assert set(args) == set(TOOL_SCHEMA["properties"])
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    assert isinstance(args["threshold"], int | float)
    assert isinstance(args["alerts"], bool)
    assert set(args["location"]) == {"lat", "lon"}
    assert all(isinstance(v, int | float) for v in args["location"].values())
    assert len(args["tags"]) >= 1 and all(isinstance(t, str) for t in args["tags"])


def test_tool_call_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=INSTANT_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.id.startswith("chatcmpl-tool-")
    assert call.type == "function"
    assert call.function.name == "get_weather"
    check_weather_args(json.loads(call.function.arguments))
    # auto picks the first tool
    r = client.chat.completions.create(
        model=INSTANT_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=TOOLS,
    )
    calls = r.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "noop"
    assert json.loads(calls[0].function.arguments) == {}


def test_tool_call_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=INSTANT_MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0].tool_calls
    assert first is not None and first[0].id and first[0].id.startswith("chatcmpl-tool-")
    assert first[0].function is not None and first[0].function.name == "get_weather"
    arguments = "".join(
        (d.tool_calls[0].function.arguments or "")
        for d in deltas
        if d.tool_calls and d.tool_calls[0].function
    )
    check_weather_args(json.loads(arguments))
    assert len(deltas) > 3
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(deltas)


def test_tool_choice_none_and_unknown_tool(
    instant_server: SimServer, client: openai.OpenAI
) -> None:
    r = client.chat.completions.create(
        model=INSTANT_MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=5,
    )
    assert not r.choices[0].message.tool_calls and r.choices[0].message.content
    body = {
        "model": INSTANT_MODEL,
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "missing"}},
    }
    resp = httpx.post(instant_server.url + "/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "BadRequestError"


def test_embeddings(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=INSTANT_MODEL, input=["alpha", "beta"])
    assert [d.index for d in r.data] == [0, 1]
    a, b = (d.embedding for d in r.data)
    assert len(a) == len(b) == 384
    assert math.isclose(math.fsum(x * x for x in a), 1.0, rel_tol=1e-6)
    assert a != b
    assert r.usage.prompt_tokens == 4
    again = client.embeddings.create(model=INSTANT_MODEL, input="alpha")
    assert again.data[0].embedding == a
    raw = httpx.post(
        str(client.base_url) + "embeddings",
        json={"model": INSTANT_MODEL, "input": "alpha", "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(decoded, a, strict=True)
    )


def test_tokenize_detokenize(instant_server: SimServer) -> None:
    url = instant_server.url
    text = "Hello, continuous-batching world! 12345"
    tok = httpx.post(url + "/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tok["count"] == len(tok["tokens"]) > 5
    assert tok["max_model_len"] == 8192
    assert "".join(tok["token_strs"][1:]) == text
    back = httpx.post(url + "/detokenize", json={"tokens": tok["tokens"][1:]}).json()
    assert back["prompt"] == text
    chat = httpx.post(url + "/tokenize", json={"messages": MESSAGES}).json()
    usage = httpx.post(
        url + "/v1/chat/completions",
        json={"model": INSTANT_MODEL, "messages": MESSAGES, "max_tokens": 1},
    ).json()["usage"]
    assert chat["count"] == usage["prompt_tokens"]


def test_errors(instant_server: SimServer) -> None:
    url = instant_server.url
    r = httpx.post(url + "/v1/chat/completions", json={"model": "nope", "messages": MESSAGES})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    for payload in (
        b"{not json",
        b"[]",
        b'{"messages": "x"}',
        b'{"messages": [], "max_tokens": "x"}',
    ):
        r = httpx.post(
            url + "/v1/chat/completions",
            content=payload,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, payload
        err = r.json()["error"]
        assert err["code"] == 400 and err["type"] == "Bad Request" and err["message"]
    r = httpx.post(
        url + "/v1/completions", json={"model": INSTANT_MODEL, "prompt": "x", "stream_options": {}}
    )
    assert r.status_code == 400
    long_prompt = "word " * 9000
    r = httpx.post(url + "/v1/completions", json={"model": INSTANT_MODEL, "prompt": long_prompt})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "BadRequestError"
    assert "maximum context length is 8192" in r.json()["error"]["message"]
    r = httpx.post(
        url + "/v1/completions", json={"model": INSTANT_MODEL, "prompt": "x", "max_tokens": 9000}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert httpx.get(url + "/v1/nothing").status_code == 404
    assert httpx.get(url + "/v1/chat/completions").status_code == 405
    # Unknown fields are ignored, like vLLM does.
    r = httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": INSTANT_MODEL,
            "messages": MESSAGES,
            "max_tokens": 2,
            "top_k": 5,
            "min_p": 0.1,
            "repetition_penalty": 1.1,
            "guided_json": {"type": "object"},
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    assert r.status_code == 200


REQUIRED_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:time_per_output_token_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prefill_time_seconds_bucket",
    "vllm:request_decode_time_seconds_bucket",
    "vllm:request_inference_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_params_max_tokens_bucket",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:cache_config_info",
)


def test_metrics_names_labels_and_counts(instant_server: SimServer) -> None:
    text = instant_server.metrics()
    for name in REQUIRED_METRICS:
        assert f"\n{name}{{" in text, name
    labels = {"model_name": INSTANT_MODEL, "engine": "0"}
    assert metric_value(text, "vllm:num_requests_running", **labels) == 0
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert "# TYPE vllm:request_success_total counter" in text
    before = text
    url = instant_server.url
    prompt_total = completion_total = 0
    for i in range(5):
        usage = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": INSTANT_MODEL,
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 10 + i,
                "ignore_eos": True,
                "stream": i % 2 == 0,
                "stream_options": {"include_usage": True} if i % 2 == 0 else None,
            },
        )
        if i % 2:
            u = usage.json()["usage"]
        else:
            u = [
                e
                for e in (
                    json.loads(x[6:]) for x in usage.text.split("\n\n") if x.startswith("data: {")
                )
            ][-1]["usage"]
        prompt_total += u["prompt_tokens"]
        completion_total += u["completion_tokens"]
    after = instant_server.metrics()

    def delta(name: str, **extra: str) -> float:
        return metric_value(after, name, **labels, **extra) - metric_value(
            before, name, **labels, **extra
        )

    assert delta("vllm:request_success_total", finished_reason="length") == 5
    assert delta("vllm:request_success_total", finished_reason="abort") == 0
    assert delta("vllm:generation_tokens_total") == completion_total == sum(range(10, 15))
    assert delta("vllm:prompt_tokens_total") == prompt_total
    assert delta("vllm:e2e_request_latency_seconds_count") == 5
    assert delta("vllm:request_generation_tokens_sum") == completion_total
    assert delta("vllm:inter_token_latency_seconds_count") == completion_total - 5
    assert delta("vllm:request_params_max_tokens_count") == 5
    info = [ln for ln in after.splitlines() if ln.startswith("vllm:cache_config_info{")]
    assert info and 'block_size="16"' in info[0] and 'engine="0"' in info[0]
