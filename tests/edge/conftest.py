from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.edge.edgeproc import EdgeConfig, Nginx, in_front_of
from tests.procs import Proc, processes

# Limits of the co-located edge: generous for /v1/ (tests send many requests), tight for the
# /v1/embeddings override so that its burst is reached in a few requests.
COLOCATED_VARS: dict[str, Any] = {
    "nginx_limit_key_rate": "1000r/s",
    "nginx_limit_key_burst": 1000,
    "nginx_limit_ip_rate": "1000r/s",
    "nginx_limit_ip_burst": 1000,
    "nginx_limit_conn_per_key": 4,
    "nginx_limit_routes": [{"path": "/v1/embeddings", "key_rate": "1r/m", "key_burst": 2}],
    "nginx_client_max_body_size": "64k",
    "nginx_client_header_timeout": "1s",
    "nginx_retry_after_s": 7,
}


@dataclass
class EdgeStack:
    edge: EdgeConfig
    nginx: Nginx
    gateways: list[Proc]
    sim: Proc
    workdir: Path


@pytest.fixture(scope="module")
def colocated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    """Edge and gateway on one host: nginx -> unix socket -> Gunicorn (2 workers) ->
    a simulator with fixed timing (TTFT 100 ms, 20 ms between tokens)."""
    tmp = tmp_path_factory.mktemp("colocated")
    with processes(tmp) as ps:
        sim = ps.sim("--ttft-ms", "100", "--itl-ms", "20", "--max-num-seqs", "256")
        sock = str(tmp / "gw.sock")
        gw = ps.gateway([sim], workers=2, unix_socket=sock)
        with in_front_of(tmp, gw, COLOCATED_VARS) as nginx:
            yield EdgeStack(nginx.edge, nginx, [gw], sim, tmp)
