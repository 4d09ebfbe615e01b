"""An edge host in front of two gateway hosts: least_conn, the drain switch, a slow gateway,
dead gateways. The upstream comes from the inventory (group "gateway", host vars)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.edge import sse
from tests.edge.conftest import EdgeStack
from tests.edge.edgeproc import (
    EDGE_HOST,
    UNLIMITED_VARS,
    EdgeConfig,
    access_log,
    inventory,
    recap,
    render,
    running,
)
from tests.procs import SIM_MODEL, TEST_KEY, KeepAliveLoad, metric_total, processes, wait_until

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = "/v1/chat/completions"


def _chat(max_tokens: int, stream: bool = False) -> bytes:
    return json.dumps(
        {
            "model": SIM_MODEL,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    ).encode()


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    tmp = tmp_path_factory.mktemp("two-gateways")
    with processes(tmp) as ps:
        sim = ps.sim("--ttft-ms", "20", "--itl-ms", "10", "--max-num-seqs", "256")
        gws = [ps.gateway([sim], workers=2), ps.gateway([sim], workers=2)]
        edge = EdgeConfig(tmp / "nginx", vars={"nginx_proxy_read_timeout": "2s"})
        stack = EdgeStack(edge, None, gws, sim, tmp)  # type: ignore[arg-type]
        render(tmp / "ansible", _inventory(stack))
        with running(edge) as nginx:
            stack.nginx = nginx
            yield stack


def _inventory(stack: EdgeStack) -> dict[str, object]:
    gateways = {
        f"gw{i + 1}": {"inferstack_gateway_port": g.port} for i, g in enumerate(stack.gateways)
    }
    return inventory({EDGE_HOST: stack.edge}, gateways)


def _served(stack: EdgeStack) -> list[float]:
    """Chat requests each gateway has answered so far."""
    return [metric_total(g.url, "inferstack_requests_total", route=CHAT) for g in stack.gateways]


def _chat_ok(stack: EdgeStack, n: int) -> list[int]:
    with httpx.Client(base_url=stack.edge.url, headers=AUTH, timeout=30) as client:
        return [client.post(CHAT, content=_chat(2)).status_code for _ in range(n)]


def test_upstream_lists_every_gateway_host_with_least_conn(two_gateways: EdgeStack) -> None:
    upstream = (two_gateways.edge.prefix / "conf" / "inferstack" / "upstream.conf").read_text()
    assert "least_conn;" in upstream
    for name, gw in zip(("gw1", "gw2"), two_gateways.gateways, strict=True):
        assert f"# {name}\n    server 127.0.0.1:{gw.port} max_fails=3" in upstream
    assert "keepalive 64;" in upstream


def test_requests_spread_over_both_gateways(two_gateways: EdgeStack) -> None:
    before = _served(two_gateways)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: _chat_ok(two_gateways, 5), range(8)))
    assert all(s == 200 for batch in statuses for s in batch)
    after = _served(two_gateways)
    added = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(added) == 40
    assert min(added) >= 5, f"one gateway got almost nothing: {added}"


def _events(sock: socket.socket, seconds: float) -> int:
    """SSE events read from ``sock`` within ``seconds``."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received.count(b"data: {")


def test_drain_moves_new_requests_and_keeps_streams(two_gateways: EdgeStack) -> None:
    """tasks_from: drain with nginx_drain_hosts=[gw1] re-renders the upstream with gw1 down
    and reloads nginx: new requests all go to gw2, while streams already running on either
    gateway go on, on the old workers, which exit once their streams are over."""
    stack = two_gateways
    body = _chat(3000, stream=True)  # 30 s of tokens: still running after the playbook
    socks = [sse.start(("127.0.0.1", stack.edge.http_port), CHAT, body, AUTH)[0] for _ in range(2)]
    try:
        assert wait_until(
            lambda: metric_total(stack.sim.url, "vllm:num_requests_running") == 2, timeout=10
        )
        assert all(_events(s, 0.3) > 5 for s in socks)
        workers_before = set(stack.nginx.workers())
        result = render(
            stack.workdir / "drain",
            _inventory(stack),
            tasks="drain",
            extra={"nginx_drain_hosts": ["gw1"]},
        )
        assert recap(result)["changed"] >= 1
        upstream = (stack.edge.prefix / "conf" / "inferstack" / "upstream.conf").read_text()
        gw1 = f"server 127.0.0.1:{stack.gateways[0].port} max_fails=3 fail_timeout=10s down;"
        assert gw1 in upstream
        # Reloaded: new workers; an old one stays while it carries streams.
        assert wait_until(lambda: set(stack.nginx.workers()) - workers_before != set())
        assert workers_before & set(stack.nginx.workers())

        before = _served(stack)
        assert _chat_ok(stack, 10) == [200] * 10
        after = _served(stack)
        assert after[0] == before[0], "a drained gateway got new requests"
        assert after[1] == before[1] + 10

        # Both streams still flow: 10 ms a token, so at least 20 events in half a second.
        assert [_events(s, 0.5) >= 20 for s in socks] == [True, True]
    finally:
        for s in socks:
            s.close()
    # With their streams gone the old workers finish.
    assert wait_until(lambda: not workers_before & set(stack.nginx.workers()), timeout=10)

    # An empty list undrains.
    render(
        stack.workdir / "undrain", _inventory(stack), tasks="drain", extra={"nginx_drain_hosts": []}
    )
    assert " down;" not in (stack.edge.prefix / "conf" / "inferstack" / "upstream.conf").read_text()
    before = _served(stack)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _chat_ok(stack, 5), range(4)))
    after = _served(stack)
    assert after[0] > before[0], "gw1 got nothing after the undrain"


def test_gateway_restart_behind_the_edge_fails_no_request(tmp_path: Path) -> None:
    """What rolling-restart.yml does to a gateway behind an edge with another gateway: stop it
    (SIGTERM: lame duck for inferstack_gateway_lame_duck_s, 5 s, longer than the edge's idle
    upstream timeout, 4 s), start it again, no nginx reload. 8 keep-alive clients loop through
    the edge meanwhile: not one request fails, and after nginx_upstream_fail_timeout the
    restarted gateway gets requests again (what the nginx role's entry point "settle" waits)."""
    with processes(tmp_path) as ps:
        sim = ps.sim("--ttft-ms", "2", "--itl-ms", "2", "--max-num-seqs", "256")
        env = {"INFERSTACK_LAME_DUCK_S": "5"}
        gws = [ps.gateway([sim], workers=2, env=env) for _ in range(2)]
        edge = EdgeConfig(
            tmp_path / "nginx", vars={**UNLIMITED_VARS, "nginx_upstream_fail_timeout": "2s"}
        )
        stack = EdgeStack(edge, None, gws, sim, tmp_path)  # type: ignore[arg-type]
        render(tmp_path / "ansible", _inventory(stack))
        upstream = (edge.prefix / "conf" / "inferstack" / "upstream.conf").read_text()
        assert "keepalive_timeout 4s;" in upstream
        with running(edge), KeepAliveLoad(edge.url, CHAT, _chat(2), AUTH) as load:
            time.sleep(1.0)
            port = gws[0].port
            gws[0].stop(timeout=30)
            gws[0] = ps.gateway([sim], workers=2, env=env, port=port)
            time.sleep(3.0)  # fail_timeout 2 s: the edge tries the new gateway again
            before = _served(stack)[0]
            time.sleep(1.0)
            back = _served(stack)[0] - before
    assert load.done > 100
    failures = load.failures
    assert failures == [], f"{len(failures)} of {load.done} requests failed: {failures[:3]}"
    assert back > 0, "the restarted gateway got no requests from the edge"


def test_silent_gateway_gets_504_json(two_gateways: EdgeStack) -> None:
    """nginx_proxy_read_timeout = 2s here: a non-streamed answer of 400 tokens at 10 ms
    each keeps the gateway silent for 4 s."""
    resp = httpx.post(two_gateways.edge.url + CHAT, headers=AUTH, content=_chat(400), timeout=30)
    assert resp.status_code == 504
    err = resp.json()["error"]
    assert err["code"] == "gateway_timeout" and err["type"] == "timeout_error"


def test_dead_gateways(two_gateways: EdgeStack) -> None:
    """(Last in this module: it stops the gateways.) With gw1 gone every request still
    succeeds on gw2 (a refused connection is retried on the next server); with both gone the
    edge answers 502 JSON with Retry-After."""
    stack = two_gateways
    stack.gateways[0].stop()
    assert _chat_ok(stack, 10) == [200] * 10
    assert wait_until(
        lambda: any(", " in e["upstream_addr"] for e in access_log(stack.edge)), timeout=5
    ), "no request was passed on to the second gateway"
    stack.gateways[1].stop()
    resp = httpx.post(stack.edge.url + CHAT, headers=AUTH, content=_chat(2))
    assert resp.status_code == 502
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "gateway_unreachable"
