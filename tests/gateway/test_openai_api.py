"""The gateway speaks OpenAI's API to the official client, in front of real simulators."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway.conftest import Stack
from tests.procs import SIM_MODEL, TEST_KEY


def test_chat_completion(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model=SIM_MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_text_completion(stack: Stack) -> None:
    r = stack.client().completions.create(
        model=SIM_MODEL, prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_embeddings(stack: Stack) -> None:
    r = stack.client().embeddings.create(model=SIM_MODEL, input=["a", "b c"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) > 0
    assert r.data[0].embedding != r.data[1].embedding


def test_models_lists_the_union_of_backends(stack: Stack) -> None:
    models = stack.client().models.list()
    assert [m.id for m in models.data] == [SIM_MODEL]


def test_stream_without_usage_hides_the_injected_usage_chunk(stack: Stack) -> None:
    chunks = list(
        stack.client().chat.completions.create(
            model=SIM_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks, "no chunks"
    assert all(c.choices for c in chunks), "a usage-only chunk leaked to a client that did not ask"
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_with_usage_keeps_it(stack: Stack) -> None:
    chunks = list(
        stack.client().chat.completions.create(
            model=SIM_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_stream_relays_engine_bytes_and_done(stack: Stack) -> None:
    """Same request direct and through the gateway: identical events, [DONE] kept."""
    body = {
        "model": SIM_MODEL,
        "prompt": "abc",
        "max_tokens": 6,
        "stream": True,
        "seed": 7,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    direct = httpx.post(stack.sims[0].url + "/v1/completions", json=body, timeout=10).text
    via = httpx.post(
        stack.gateway.url + "/v1/completions",
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    ).text

    def texts(raw: str) -> list[str]:
        out = []
        for line in raw.split("\n\n"):
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                out.append(json.dumps([c.get("text") for c in event["choices"]]))
        return out

    assert via.rstrip().endswith("data: [DONE]")
    assert texts(via) == texts(direct)


def test_vllm_extra_fields_pass_through(stack: Stack) -> None:
    r = httpx.post(
        stack.gateway.url + "/v1/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json={
            "model": SIM_MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "top_k": 5,
            "min_p": 0.1,
            "repetition_penalty": 1.1,
            "ignore_eos": True,
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3  # ignore_eos reached the engine


def test_tool_calls_pass_through(stack: Stack) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    r = stack.client().chat.completions.create(
        model=SIM_MODEL,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=tools,
        tool_choice="auto",
    )  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert r.choices[0].finish_reason == "tool_calls"


def test_request_id_honoured_or_generated(stack: Stack) -> None:
    h = {"Authorization": f"Bearer {TEST_KEY}"}
    r = httpx.get(stack.gateway.url + "/v1/models", headers={**h, "X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = httpx.get(stack.gateway.url + "/v1/models", headers=h)
    assert len(r2.headers["x-request-id"]) == 32


def test_key_id_header_names_the_authenticated_key(stack: Stack) -> None:
    """X-Inferstack-Key-Id (for the edge's log) carries the key's id, never the key."""
    from tests.procs import OTHER_KEY

    url = stack.gateway.url
    r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert r.headers["x-inferstack-key-id"] == "alpha"
    body = {"model": SIM_MODEL, "prompt": "x", "max_tokens": 2, "stream": True}
    with httpx.stream(
        "POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    ) as s:
        assert s.headers["x-inferstack-key-id"] == "beta"
    # Errors after authentication name the key too; no key, no header.
    bad = httpx.post(
        url + "/v1/completions", json={"model": 1}, headers={"Authorization": f"Bearer {TEST_KEY}"}
    )
    assert bad.status_code == 400 and bad.headers["x-inferstack-key-id"] == "alpha"
    assert "x-inferstack-key-id" not in httpx.get(url + "/v1/models").headers
    assert "x-inferstack-key-id" not in httpx.get(url + "/health").headers


def test_health_and_ready(stack: Stack) -> None:
    assert httpx.get(stack.gateway.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(stack.gateway.url + "/ready").json()
    assert ready == {"status": "ready", "healthy_backends": 2}


@pytest.mark.parametrize("stream", [False, True])
def test_two_keys_are_told_apart_in_metrics(stack: Stack, stream: bool) -> None:
    from tests.procs import OTHER_KEY, metric_total

    before = metric_total(
        stack.gateway.url, "inferstack_requests_total", key_id="beta", route="/v1/completions"
    )
    for _ in range(3):
        resp = stack.client(OTHER_KEY).completions.create(
            model=SIM_MODEL, prompt="x", max_tokens=2, stream=stream
        )
        if stream:
            list(resp)  # type: ignore[call-overload]
    after = metric_total(
        stack.gateway.url, "inferstack_requests_total", key_id="beta", route="/v1/completions"
    )
    assert after - before == 3
