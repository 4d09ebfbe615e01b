"""Failure injection, start-up behaviour and configuration errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest
from simproc import INSTANT_MODEL, SimServer, running, wait_for
from streams import chat_body, stream_chat

CHAT = {"model": INSTANT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SimServer, ...]]:
    with running(
        SimServer("--error-rate", "1.0"),
        SimServer("--error-rate", "0.5", "--seed", "3"),
        SimServer("--error-rate", "0.5", "--seed", "3"),
        SimServer("--itl-ms", "5", "--stall-rate", "1", "--stall-ms", "300"),
    ) as group:
        yield group


def test_error_rate_one_answers_500(servers: tuple[SimServer, ...]) -> None:
    url = servers[0].url
    for path, body in (
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": INSTANT_MODEL, "prompt": "x"}),
    ):
        r = httpx.post(url + path, json=body)
        assert r.status_code == 500
        assert r.json() == {
            "error": {
                "message": "Internal server error",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        }
    # Bad input is still a 400, never a 500.
    assert httpx.post(url + "/v1/chat/completions", content=b"{").status_code == 400
    assert httpx.get(url + "/health").status_code == 200


def test_error_rate_is_deterministic(servers: tuple[SimServer, ...]) -> None:
    a, b = servers[1], servers[2]
    codes_a = [httpx.post(a.url + "/v1/chat/completions", json=CHAT).status_code for _ in range(40)]
    codes_b = [httpx.post(b.url + "/v1/chat/completions", json=CHAT).status_code for _ in range(40)]
    assert codes_a == codes_b
    assert set(codes_a) == {200, 500}
    assert 8 <= codes_a.count(500) <= 32


async def test_stall_mid_stream(servers: tuple[SimServer, ...]) -> None:
    url = servers[3].url
    async with aiohttp.ClientSession() as session:
        result = await stream_chat(session, url, chat_body(INSTANT_MODEL, 20))
    assert result.usage is not None and result.usage["completion_tokens"] == 20
    gaps = sorted(result.itls)
    assert gaps[-1] > 0.25  # the stall
    assert gaps[-2] < 0.1  # everything else flows


def test_crash_after() -> None:
    with running(SimServer("--crash-after", "2")) as (server,):
        for _ in range(2):
            assert httpx.post(server.url + "/v1/chat/completions", json=CHAT).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.post(server.url + "/v1/chat/completions", json=CHAT)
        assert server.proc.wait(5) == 1


def test_startup_delay() -> None:
    with running(SimServer("--startup-delay-ms", "700")) as (server,):
        assert httpx.get(server.url + "/health").status_code == 503
        r = httpx.post(server.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and r.json()["error"]["code"] == 503
        assert httpx.get(server.url + "/metrics").status_code == 200
        took = wait_for(lambda: httpx.get(server.url + "/health").status_code == 200, timeout=5)
        assert took > 0.2
        assert httpx.post(server.url + "/v1/chat/completions", json=CHAT).status_code == 200


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "inferstack.sim", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--error-rate", "2"], {}, "error_rate"),
        ([], {"INFERSTACK_SIM_STALL_RATE": "-1"}, "stall_rate"),
        (["--profile", "nope"], {}, "unknown profile"),
        (["--set", "no_such_knob=1"], {}, "no_such_knob"),
        (["--set", "engine.max_num_seqs=0"], {}, "engine.max_num_seqs"),
        (
            ["--profile", "qwen3-32b-2xa6000", "--set", "gpu_memory_utilization=0.6"],
            {},
            "KV cache",
        ),
        (["--profile", "llama-3.1-8b-h100", "--max-model-len", "200000"], {}, "max_model_len"),
    ],
)
def test_bad_configuration_stops_with_one_line(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    proc = _run_cli(*args, "--describe", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_describe_real_profiles() -> None:
    for name in ("llama-3.1-8b-h100", "qwen3-32b-2xa6000"):
        proc = _run_cli("--profile", name, "--describe")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["mode"] == "roofline"
        assert info["kv_cache"]["tokens"] >= info["engine"]["max_model_len"]
        decode = info["decode_step"]
        assert decode["batch_1"]["ms"] < decode["batch_64"]["ms"]
        assert decode["batch_1"]["bound"] == "memory"
        assert info["prefill_1000_tokens"]["bound"] == "compute"
    proc = _run_cli("--profile", "instant", "--ttft-ms", "50", "--describe")
    assert json.loads(proc.stdout)["fixed"] == {"ttft_ms": 50.0, "itl_ms": 0.0}


def test_environment_settings_are_read() -> None:
    server = SimServer(
        env={"INFERSTACK_SIM_MODEL": "env/model", "INFERSTACK_SIM_MAX_MODEL_LEN": "1024"}
    )
    with running(server):
        card = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert card["id"] == "env/model" and card["max_model_len"] == 1024
        start = time.monotonic()
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "env/model", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200 and time.monotonic() - start < 5
