"""Monitoring tests: the monitoring configuration rendered once per session by the roles'
render entries (ansible-playbook, playbooks/monitoring-render.yml) from a small inventory
whose monitoring host points at loopback ports chosen here.

Inventory: mon1 (monitoring, gateway, cache, edge) on 127.0.0.1; sim1, an engine host running
two simulator instances (gpu_count 2, TP 1: ports base, base+1); gpu1, a vLLM host with 4 GPUs
at TP 2 (two instances, a DCGM exporter) that nothing answers for except a static DCGM page
in the live test. Every host's node exporter port is mon1's, so all node targets are up.
Scrape and evaluation intervals are 1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ansible-playbook"


def free_port_pair() -> int:
    """A port p with p and p+1 free now (bounded tries)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


@dataclass
class Rendered:
    dir: Path
    ports: dict[str, int]
    webhook_url: str

    def host(self, name: str) -> Path:
        return self.dir / name

    @property
    def prometheus(self) -> Path:
        return self.dir / "mon1" / "prometheus"

    @property
    def rule_files(self) -> list[Path]:
        return sorted((self.prometheus / "rules").glob("*.yml"))


def _inventory(ports: dict[str, int]) -> dict[str, object]:
    node = {"inferstack_node_exporter_port": ports["node"]}
    mon1 = {
        **node,
        "inferstack_prometheus_port": ports["prometheus"],
        "inferstack_alertmanager_port": ports["alertmanager"],
        "inferstack_gateway_port": ports["gateway"],
        "inferstack_nginx_exporter_port": ports["nginx_exporter"],
        "inferstack_edge_status_port": ports["edge_status"],
        "inferstack_redis_exporter_port": ports["redis_exporter"],
        "inferstack_redis_port": ports["redis"],
    }
    sim1 = {
        **node,
        "inferstack_engine": "simulator",
        "inferstack_gpu_count": 2,
        "inferstack_tensor_parallel_size": 1,
        "inferstack_engine_port_base": ports["engine"],
    }
    gpu1 = {
        **node,
        "inferstack_engine": "vllm",
        "inferstack_gpu_count": 4,
        "inferstack_tensor_parallel_size": 2,
        "inferstack_engine_port_base": ports["gpu_engine"],
        "inferstack_dcgm_exporter_port": ports["dcgm"],
    }
    return {
        "all": {
            "vars": {"ansible_host": "127.0.0.1"},
            "children": {
                "monitoring": {"hosts": {"mon1": mon1}},
                "gateway": {"hosts": {"mon1": {}}},
                "cache": {"hosts": {"mon1": {}}},
                "edge": {"hosts": {"mon1": {}}},
                "engine": {"hosts": {"sim1": sim1, "gpu1": gpu1}},
            },
        }
    }


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    tmp = tmp_path_factory.mktemp("monitoring-render")
    ports = {
        name: free_port()
        for name in (
            "prometheus",
            "alertmanager",
            "gateway",
            "node",
            "nginx_exporter",
            "edge_status",
            "redis_exporter",
            "redis",
            "dcgm",
            "webhook",
        )
    }
    ports["engine"] = free_port_pair()
    ports["gpu_engine"] = free_port_pair()
    inventory = tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump(_inventory(ports)))
    out = tmp / "out"
    webhook = f"http://127.0.0.1:{ports['webhook']}/alerts"
    extra = {
        "render_dir": str(out),
        "prometheus_scrape_interval": "1s",
        "prometheus_scrape_timeout": "1s",
        "prometheus_evaluation_interval": "1s",
        "alertmanager_webhook_url": webhook,
        "alertmanager_critical_webhook_url": webhook + "/critical",
        "alertmanager_group_wait": "1s",
    }
    proc = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(inventory),
            str(ROOT / "playbooks" / "monitoring-render.yml"),
            "-e",
            json.dumps(extra),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    yield Rendered(out, ports, webhook)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: scripts/system-deps installs Debian's prometheus"
    return path
