"""Bad input gets a clear OpenAI-shaped error naming the problem; never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import Stack
from tests.procs import SIM_MODEL, TEST_KEY

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = "/v1/chat/completions"


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text
    return err  # type: ignore[no-any-return]


def test_missing_key(stack: Stack) -> None:
    err = _error(httpx.post(stack.gateway.url + CHAT, json={}), 401)
    assert err["type"] == "authentication_error"


def test_wrong_key_with_official_client(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        stack.client("sk-wrong").models.list()


def test_malformed_json(stack: Stack) -> None:
    err = _error(httpx.post(stack.gateway.url + CHAT, content=b'{"model": ', headers=AUTH), 400)
    assert "JSON" in str(err["message"])


def test_not_an_object(stack: Stack) -> None:
    _error(httpx.post(stack.gateway.url + CHAT, content=b"[1,2]", headers=AUTH), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": SIM_MODEL, "messages": "hi"}, "messages"),
        ({"model": SIM_MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"model": SIM_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
            "max_tokens",
        ),
        (
            {"model": SIM_MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            "temperature",
        ),
        (
            {"model": SIM_MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": SIM_MODEL, "messages": []}, "messages"),
        (
            {
                "model": SIM_MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
            "stream_options",
        ),
    ],
)
def test_wrong_types_name_the_field(stack: Stack, body: dict[str, object], param: str) -> None:
    err = _error(httpx.post(stack.gateway.url + CHAT, json=body, headers=AUTH), 400)
    assert err["param"] == param
    assert param in str(err["message"])


def test_nan_is_refused(stack: Stack) -> None:
    body = (
        b'{"model":"%s","messages":[{"role":"user","content":"x"}],"temperature":NaN}'
        % SIM_MODEL.encode()
    )
    err = _error(httpx.post(stack.gateway.url + CHAT, content=body, headers=AUTH), 400)
    assert err["param"] == "temperature"
    assert "finite" in str(err["message"])


def test_oversized_body(stack: Stack) -> None:
    big = b'{"model":"x","prompt":"' + b"a" * (5 * 1024 * 1024) + b'"}'
    err = _error(httpx.post(stack.gateway.url + "/v1/completions", content=big, headers=AUTH), 413)
    assert err["code"] == "request_too_large"


def test_max_tokens_ceiling(stack: Stack) -> None:
    body = {"model": SIM_MODEL, "prompt": "x", "max_tokens": 10**7}
    err = _error(httpx.post(stack.gateway.url + "/v1/completions", json=body, headers=AUTH), 400)
    assert err["param"] == "max_tokens"


def test_unknown_model(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        stack.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert "no-such-model" in str(exc.value)


def test_unknown_route_is_json(stack: Stack) -> None:
    _error(httpx.get(stack.gateway.url + "/v1/nothing", headers=AUTH), 404)


def test_wrong_method_is_json(stack: Stack) -> None:
    _error(httpx.get(stack.gateway.url + CHAT, headers=AUTH), 405)


def test_no_500_in_metrics_after_bad_input(stack: Stack) -> None:
    from tests.procs import metric_samples

    text = httpx.get(stack.gateway.url + "/metrics").text
    statuses = {lb["status"] for lb, v in metric_samples(text, "inferstack_requests_total") if v}
    assert not any(s.startswith("5") for s in statuses), statuses
