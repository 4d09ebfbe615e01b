"""The nginx role's files for each inventory variant pass ``nginx -t``; preflight stops bad
variables naming them. One ansible-playbook run renders every variant (one edge host each)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.edge.edgeproc import ROOT, EdgeConfig, inventory, nginx_test, recap, run_playbook

# name: (role variables, co-located with a gateway)
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "single": ({}, True),
    "single_tls_operator_cert": ({"nginx_tls": True, "nginx_tls_redirect": False}, True),
    "multi": ({"nginx_trusted_proxies": ["10.0.0.0/8", "192.0.2.7"]}, False),
    "multi_tls_selfsigned": ({"nginx_tls": True}, False),
}
# name: (role variables, what the failure must name)
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "bad_rate": ({"nginx_limit_key_rate": "10/s"}, "nginx_limit_key_rate = '10/s'"),
    "bad_route": (
        {"nginx_limit_routes": [{"path": "/v1/embeddings", "key_rate": "5r/s"}]},
        "nginx_limit_routes entry",
    ),
    "bad_time": ({"nginx_send_timeout": "1 minute"}, "nginx_send_timeout = '1 minute'"),
    "bad_cert": (
        {"nginx_tls": True, "nginx_tls_cert": "/nonexistent.crt", "nginx_tls_key": "/x.key"},
        "/nonexistent.crt does not exist",
    ),
    "drain_all": (
        {"nginx_drain_hosts": ["gw1", "gw2", "single", "single_tls_operator_cert"]},
        "leave at least one undrained",
    ),
    "drain_unknown": ({"nginx_drain_hosts": ["gw9"]}, "nginx_drain_hosts = ['gw9']"),
}


class Rendered:
    def __init__(self, tmp: Path) -> None:
        self.edges = {name: EdgeConfig(tmp / name) for name in [*VARIANTS, *BAD]}
        cert, key = tmp / "operator.crt", tmp / "operator.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
                *("-subj", "/CN=edge.example", "-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
        self.operator_cert = cert
        operator = {"nginx_tls_cert": str(cert), "nginx_tls_key": str(key)}
        gateways: dict[str, dict[str, Any]] = {
            "gw1": {"inferstack_gateway_port": 8101},
            "gw2": {"ansible_host": "localhost", "inferstack_gateway_port": 8102},
        }
        for name, (extra, colocated) in VARIANTS.items():
            self.edges[name].vars = {**extra, **(operator if "operator" in name else {})}
            if colocated:
                gateways[name] = {"inferstack_gateway_socket": f"/run/test-{name}/gw.sock"}
        for name, (extra, _) in BAD.items():
            self.edges[name].vars = extra
        self.result = run_playbook(tmp / "ansible", inventory(self.edges, gateways))

    def conf(self, name: str, part: str) -> str:
        return (self.edges[name].prefix / "conf" / part).read_text()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    yield Rendered(tmp_path_factory.mktemp("render"))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_inventory_variant_passes_nginx_t(rendered: Rendered, name: str) -> None:
    counts = recap(rendered.result, name)
    assert counts.get("failed") == 0, rendered.result.stdout[-3000:]
    check = nginx_test(rendered.edges[name])
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


def test_colocated_edge_uses_its_own_gateway_socket(rendered: Rendered) -> None:
    upstream = rendered.conf("single", "inferstack/upstream.conf")
    assert "server unix:/run/test-single/gw.sock max_fails=3 fail_timeout=10s;" in upstream
    assert "least_conn" not in upstream
    assert upstream.count("    server ") == 1


def test_remote_edge_balances_over_every_gateway_host(rendered: Rendered) -> None:
    upstream = rendered.conf("multi", "inferstack/upstream.conf")
    assert "least_conn;" in upstream
    # Address and port of each gateway come from that host's own variables.
    assert "# gw1\n    server 127.0.0.1:8101 " in upstream
    assert "# gw2\n    server localhost:8102 " in upstream
    # The co-located edges of this inventory are gateway hosts as well (default port).
    assert "# single\n    server 127.0.0.1:8000 " in upstream
    main = rendered.conf("multi", "nginx.conf")
    assert "set_real_ip_from 10.0.0.0/8;\n    set_real_ip_from 192.0.2.7;" in main
    assert "real_ip_header" not in rendered.conf("single", "nginx.conf")


def test_connection_failures_before_an_answer_go_to_another_gateway(rendered: Rendered) -> None:
    site = rendered.conf("multi", "inferstack/site.conf")
    assert "proxy_next_upstream error timeout non_idempotent;" in site
    assert "proxy_next_upstream_tries 2;" in site


def test_tls_variants(rendered: Rendered) -> None:
    operator = rendered.conf("single_tls_operator_cert", "inferstack/site.conf")
    edge = rendered.edges["single_tls_operator_cert"]
    assert f"ssl_certificate {rendered.operator_cert};" in operator
    assert f"listen 127.0.0.1:{edge.https_port} ssl http2 default_server;" in operator
    assert f":{edge.http_port}" not in operator, "no plain HTTP listener without the redirect"
    assert not (edge.prefix / "tls").exists(), "no self-signed certificate beside the operator's"

    selfsigned = rendered.conf("multi_tls_selfsigned", "inferstack/site.conf")
    edge = rendered.edges["multi_tls_selfsigned"]
    assert f"ssl_certificate {edge.prefix}/tls/inferstack.crt;" in selfsigned
    assert f"add_header Location https://$host:{edge.https_port}$request_uri always;" in selfsigned
    assert "Strict-Transport-Security" in selfsigned
    assert "Strict-Transport-Security" not in rendered.conf("multi", "inferstack/site.conf")


@pytest.mark.parametrize("name", list(BAD))
def test_preflight_names_the_bad_variable(rendered: Rendered, name: str) -> None:
    counts = recap(rendered.result, name)
    assert counts.get("failed") == 1, rendered.result.stdout[-3000:]
    # Each case fails its own host with its own message (json result format: unwrapped).
    assert BAD[name][1] in rendered.result.stdout, rendered.result.stdout[-3000:]
    assert not (rendered.edges[name].prefix / "conf" / "nginx.conf").exists()


def test_every_variable_is_specified_and_documented() -> None:
    role = ROOT / "roles" / "nginx"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    doc = (ROOT / "docs" / "edge.md").read_text()
    for entry in ("main", "render", "drain", "maintenance"):
        assert set(specs[entry]["options"]) == set(defaults), entry
    assert [v for v in defaults if f"`{v}`" not in doc] == []
