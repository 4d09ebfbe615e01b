"""The edge as the tests and the benchmarks (bench/edge_overhead.py, bench/cache_hit.py) run
it: the nginx role renders its templates into a private prefix through
``playbooks/edge-render.yml``, then Debian's nginx runs from there on loopback ports, started
and ended by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferstack.localstack import Proc, free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PLAYBOOK = ROOT / "playbooks" / "edge-render.yml"
EDGE_HOST = "edge1"
# Limits far above what a load loop sends: for runs that measure proxying, not limiting.
UNLIMITED_VARS: dict[str, Any] = {
    "nginx_limit_key_rate": "100000r/s",
    "nginx_limit_key_burst": 100000,
    "nginx_limit_ip_rate": "100000r/s",
    "nginx_limit_ip_burst": 100000,
    "nginx_limit_conn_per_key": 0,
    "nginx_limit_routes": [],
}


@dataclass
class EdgeConfig:
    """Where one edge lives and how it is rendered."""

    prefix: Path
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    status_port: int = field(default_factory=free_port)
    vars: dict[str, Any] = field(default_factory=dict)
    """Extra role variables (limits, TLS ...)."""

    @property
    def conf(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/stub_status"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def maintenance_file(self) -> Path:
        return self.prefix / "conf" / "maintenance"

    def host_vars(self) -> dict[str, Any]:
        """Private paths and loopback ports: the same templates as the lab, another prefix."""
        return {
            "ansible_connection": "local",
            "ansible_host": "127.0.0.1",
            "ansible_python_interpreter": sys.executable,
            "nginx_conf_dir": str(self.prefix / "conf"),
            "nginx_log_dir": str(self.prefix / "logs"),
            "nginx_temp_dir": str(self.prefix / "temp"),
            "nginx_pid_file": str(self.prefix / "nginx.pid"),
            "nginx_tls_selfsigned_dir": str(self.prefix / "tls"),
            # As root nginx would run its workers as nobody, who cannot reach the test's files.
            "nginx_user": "root" if os.geteuid() == 0 else "",
            "nginx_binary": NGINX,
            "nginx_worker_processes": 2,
            "nginx_listen_address": "127.0.0.1",
            "inferstack_edge_http_port": self.http_port,
            "inferstack_edge_https_port": self.https_port,
            "inferstack_edge_status_port": self.status_port,
            **self.vars,
        }


def inventory(edges: dict[str, EdgeConfig], gateways: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An inventory with groups ``edge`` and ``gateway``.

    ``gateways`` maps gateway host names to their host vars (``inferstack_gateway_port``, or
    ``inferstack_gateway_socket``); an edge host named there too is co-located with its
    gateway (its upstream is then that host's unix socket).
    """
    gw_hosts: dict[str, Any] = {
        name: {"ansible_host": "127.0.0.1", **hv} for name, hv in gateways.items()
    }
    return {
        "all": {
            "children": {
                "edge": {"hosts": {name: e.host_vars() for name, e in edges.items()}},
                "gateway": {"hosts": gw_hosts},
            }
        }
    }


def run_playbook(
    workdir: Path,
    inv: dict[str, Any],
    tasks: str = "render",
    extra: dict[str, Any] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook playbooks/edge-render.yml`` with this inventory (not asserted)."""
    workdir.mkdir(parents=True, exist_ok=True)
    inv_file = workdir / "inventory.yml"
    inv_file.write_text(yaml.safe_dump(inv))
    extra_file = workdir / "extra.json"
    extra_file.write_text(json.dumps({"edge_tasks": tasks, **(extra or {})}))
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inv_file),
        str(PLAYBOOK),
        "-e",
        f"@{extra_file}",
    ]
    if check:
        argv.append("--check")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(workdir / "ansible-tmp"),
    }
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)


def render(workdir: Path, inv: dict[str, Any], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Render and require success."""
    result = run_playbook(workdir, inv, **kw)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


def recap(result: subprocess.CompletedProcess[str], host: str = EDGE_HOST) -> dict[str, int]:
    """The PLAY RECAP counters of ``host`` (summed over plays)."""
    out: dict[str, int] = {}
    for line in result.stdout.splitlines():
        if line.startswith(host + " ") and ":" in line and "ok=" in line:
            for part in line.split(":", 1)[1].split():
                k, _, v = part.partition("=")
                out[k] = out.get(k, 0) + int(v)
    return out


def nginx_test(edge: EdgeConfig) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the rendered files, the way the notes describe for a private prefix."""
    return subprocess.run(
        [NGINX, "-t", "-p", f"{edge.prefix}/", "-c", "conf/nginx.conf"],
        capture_output=True,
        text=True,
        timeout=30,
    )


class Nginx:
    """nginx in the foreground (``daemon off``), ended by its PID."""

    def __init__(self, edge: EdgeConfig) -> None:
        self.edge = edge
        self.log_path = edge.prefix / "nginx.out"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [NGINX, "-p", f"{self.edge.prefix}/", "-c", "conf/nginx.conf", "-g", "daemon off;"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _accepts(self.edge.status_port):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def workers(self) -> list[int]:
        """PIDs of the master's children (workers, old ones included while they drain)."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.pid:
                children.append(int(stat.parent.name))
        return children

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@contextlib.contextmanager
def running(edge: EdgeConfig) -> Iterator[Nginx]:
    nginx = Nginx(edge)
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


@contextlib.contextmanager
def in_front_of(
    workdir: Path, gateway: Proc, vars: dict[str, Any] | None = None
) -> Iterator[Nginx]:
    """The edge rendered into ``workdir`` and running in front of one local gateway: over
    the gateway's unix socket when it has one (edge and gateway on one host), else over its
    loopback port (as behind a remote edge)."""
    edge = EdgeConfig(workdir / "nginx", vars=vars or {})
    gateways = (
        {EDGE_HOST: {"inferstack_gateway_socket": gateway.unix_socket}}
        if gateway.unix_socket
        else {"gw1": {"inferstack_gateway_port": gateway.port}}
    )
    render(workdir / "ansible", inventory({EDGE_HOST: edge}, gateways))
    with running(edge) as nginx:
        yield nginx


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def access_log(edge: EdgeConfig) -> list[dict[str, Any]]:
    """The JSON lines of the access log."""
    if not edge.access_log.exists():
        return []
    return [json.loads(line) for line in edge.access_log.read_text().splitlines() if line]
