"""TLS at the edge: the role's self-signed certificate, HTTP/2 to clients, modern protocols
only, the HTTP -> HTTPS redirect, security headers; a second run changes nothing."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.edge.conftest import EdgeStack
from tests.edge.edgeproc import EDGE_HOST, EdgeConfig, inventory, recap, render, running
from tests.procs import OTHER_KEY, SIM_MODEL, TEST_KEY, processes

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
IP_BURST = 30


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    tmp = tmp_path_factory.mktemp("tls")
    with processes(tmp) as ps:
        sim = ps.sim("--ttft-ms", "20", "--itl-ms", "5")
        gw = ps.gateway([sim], workers=2)
        # A tight per-address limit, reached only by the last test of this module.
        limits = {"nginx_limit_ip_rate": "1r/m", "nginx_limit_ip_burst": IP_BURST}
        edge = EdgeConfig(tmp / "nginx", vars={"nginx_tls": True, **limits})
        render(tmp / "ansible", _inventory(edge, gw.port))
        with running(edge) as nginx:
            yield EdgeStack(edge, nginx, [gw], sim, tmp)


def _inventory(edge: EdgeConfig, gw_port: int) -> dict[str, object]:
    return inventory({EDGE_HOST: edge}, {"gw1": {"inferstack_gateway_port": gw_port}})


def _cert(stack: EdgeStack) -> str:
    return str(stack.edge.prefix / "tls" / "inferstack.crt")


def _verify(stack: EdgeStack) -> ssl.SSLContext:
    """Trust exactly the edge's self-signed certificate."""
    return ssl.create_default_context(cafile=_cert(stack))


def test_self_signed_certificate_serves_openai_clients(tls: EdgeStack) -> None:
    key = tls.edge.prefix / "tls" / "inferstack.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The certificate names 127.0.0.1, so verification against it as the CA passes.
    client = openai.OpenAI(
        base_url=tls.edge.https_url + "/v1",
        api_key=TEST_KEY,
        max_retries=0,
        http_client=httpx.Client(verify=_verify(tls), timeout=30),
    )
    reply = client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].message.content


def test_streams_over_http2(tls: EdgeStack) -> None:
    body = {
        "model": SIM_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "ignore_eos": True,
        "stream": True,
    }
    with (
        httpx.Client(http2=True, verify=_verify(tls), headers=AUTH, timeout=30) as client,
        client.stream("POST", tls.edge.https_url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.http_version == "HTTP/2"
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["strict-transport-security"].startswith("max-age=")
        events = [ln for ln in resp.iter_lines() if ln.startswith("data: {")]
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events]
    assert len([c for c in contents if c]) == 20


def _handshake(port: int, version: ssl.TLSVersion, cafile: str) -> tuple[str | None, str | None]:
    ctx = ssl.create_default_context(cafile=cafile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
    ):
        return tls_sock.version(), tls_sock.selected_alpn_protocol()


def test_modern_protocols_only(tls: EdgeStack) -> None:
    port = tls.edge.https_port
    assert _handshake(port, ssl.TLSVersion.TLSv1_3, _cert(tls)) == ("TLSv1.3", "h2")
    assert _handshake(port, ssl.TLSVersion.TLSv1_2, _cert(tls)) == ("TLSv1.2", "h2")
    with pytest.raises(ssl.SSLError):
        # The local OpenSSL may refuse TLS 1.1 itself; either way no TLS 1.1 session.
        _handshake(port, ssl.TLSVersion.TLSv1_1, _cert(tls))


def test_http_redirects_to_https_and_https_port_refuses_plain_http(tls: EdgeStack) -> None:
    resp = httpx.post(tls.edge.url + "/v1/chat/completions?x=1", content=b"{}")
    assert resp.status_code == 308  # keeps the method and body
    assert resp.json()["error"]["code"] == "https_required"  # not nginx's HTML page
    assert (
        resp.headers["location"]
        == f"https://127.0.0.1:{tls.edge.https_port}/v1/chat/completions?x=1"
    )
    # Plain HTTP sent to the HTTPS port: JSON, not nginx's HTML page.
    resp = httpx.get(f"http://127.0.0.1:{tls.edge.https_port}/health")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "https_required"
    # Errors over HTTPS carry the security headers too.
    resp = httpx.get(tls.edge.https_url + "/nope", verify=_verify(tls))
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    for header in ("strict-transport-security", "x-content-type-options", "x-request-id"):
        assert header in resp.headers


def test_second_run_changes_nothing(tls: EdgeStack) -> None:
    """Idempotent (the certificate is generated once) and check mode predicts no change."""
    cert_before = (tls.edge.prefix / "tls" / "inferstack.crt").read_bytes()
    workers_before = set(tls.nginx.workers())
    inv = _inventory(tls.edge, tls.gateways[0].port)
    assert recap(render(tls.workdir / "again", inv))["changed"] == 0
    assert recap(render(tls.workdir / "check", inv, check=True))["changed"] == 0
    assert (tls.edge.prefix / "tls" / "inferstack.crt").read_bytes() == cert_before
    assert set(tls.nginx.workers()) == workers_before, "nginx was reloaded without a change"


def test_ip_limit_applies_across_keys(tls: EdgeStack) -> None:
    """(Last in this module: it spends the address's budget.) 1 request a minute per address
    with a burst of 30: once past it, every key from that address gets 429, and so do
    requests without a key; health checks are not limited."""
    with httpx.Client(base_url=tls.edge.https_url, verify=_verify(tls), timeout=30) as client:
        statuses = []
        for i in range(IP_BURST + 2):
            statuses.append(client.get("/v1/models", headers=(AUTH, OTHER)[i % 2]).status_code)
            if statuses[-1] == 429:
                break
        assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses
        for headers in (AUTH, OTHER, {}):
            resp = client.get("/v1/models", headers=headers)
            assert resp.status_code == 429
            assert resp.json()["error"]["code"] == "rate_limit_exceeded"
            assert resp.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 200
