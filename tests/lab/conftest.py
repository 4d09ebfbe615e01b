"""The lab end to end: fresh Debian 12 hosts (systemd-nspawn) provisioned by site.yml over SSH.

The test lab has its own state directory, bridge and subnet, so it runs beside an operator's
lab. Needs root and systemd-nspawn (CI has both); skipped otherwise.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = "Qwen/Qwen3-32B"


def _free_network() -> tuple[str, str]:
    """A subnet and bridge no other lab on this machine uses (several test runs may overlap)."""
    for n in range(78, 100):
        bridge = f"inferstack-t{n}"
        taken = subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode == 0
        routes = subprocess.run(
            ["ip", "-o", "route", "show", "to", "match", f"10.{n}.0.1"],
            capture_output=True, text=True, check=False,
        ).stdout.splitlines()  # fmt: skip
        # Free: no bridge of that name and no lab (or anything else) routing the subnet.
        if not taken and all(r.startswith("default") for r in routes):
            return f"10.{n}.0", bridge
    raise RuntimeError("no free lab network among 10.78-99.0.0/24")


@dataclass
class Lab:
    dir: Path
    inventory: Path
    env: dict[str, str]
    address: str
    host: str = "lab1"
    outputs: list[str] = field(default_factory=list)

    @property
    def edge_url(self) -> str:
        return f"http://{self.address}:80"

    @property
    def api_key(self) -> str:
        return (self.dir / "state" / "api-key").read_text().strip()

    def playbook(
        self, name: str, *args: str, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(self.inventory), f"playbooks/{name}", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        self.outputs.append(r.stdout + r.stderr)
        return r

    def playbook_under_load(
        self, name: str, *args: str, clients: int
    ) -> tuple[subprocess.CompletedProcess[str], int, list[str]]:
        """Playbook ``name`` while ``clients`` loop chat requests through the edge:
        (the playbook's run, requests answered in full, failures)."""
        url = self.edge_url + "/v1/chat/completions"
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(load, url, self.api_key, stop) for _ in range(clients)]
            r = self.playbook(name, *args)
            time.sleep(2)
            stop.set()
            results = [f.result() for f in futures]
        return r, sum(n for n, _ in results), [f for _, fs in results for f in fs]

    def main_pids(self, *units: str, host: str | None = None) -> list[str]:
        r = self.exec("systemctl", "show", "--property=MainPID", "--value", *units, host=host)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    def pending_restarts(self, host: str | None = None) -> list[str]:
        """The units marked for a restart on ``host`` (site.yml's rolling restart clears them)."""
        r = self.exec("ls", "/var/lib/inferstack/restart-pending", host=host)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    def deploy_and_check(self) -> str:
        """site.yml, then health.yml with every check passed: health.yml's output."""
        r = self.playbook("site.yml")
        assert r.returncode == 0, r.stdout[-5000:]
        health = self.playbook("health.yml")
        assert health.returncode == 0, health.stdout[-5000:]
        m = re.search(r"(\d+)/(\d+) checks passed", health.stdout)
        assert m and m.group(1) == m.group(2), health.stdout[-3000:]
        return health.stdout

    def host_address(self, host: str) -> str:
        inv = yaml.safe_load(self.inventory.read_text())
        return str(inv["all"]["hosts"][host]["ansible_host"])

    def exec(self, *cmd: str, host: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "inferstack"), "lab", "exec", host or self.host, "--", *cmd],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "inferstack"), "lab", *args, "--inventory", str(self.inventory)],
            env=self.env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip


def recap(output: str, host: str = "lab1") -> dict[str, int]:
    """The PLAY RECAP counters of ``host``."""
    m = re.search(rf"^{host}\s*:(.*)$", output, re.M)
    assert m, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def load(url: str, key: str, stop: threading.Event) -> tuple[int, list[str]]:
    """Chat requests back to back on one keep-alive connection until ``stop``, streamed and
    not in turn: (answered in full, failures)."""
    ok, failures = 0, []
    with httpx.Client(timeout=60) as client:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"n{i}"}],
                    "max_tokens": 16, "stream": i % 2 == 0}  # fmt: skip
            try:
                r = client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
                if r.status_code == 200 and (i % 2 or r.text.rstrip().endswith("[DONE]")):
                    ok += 1
                else:
                    failures.append(f"HTTP {r.status_code} {r.text[:120]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
    return ok, failures


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "debootstrap", "iptables"):
        if not shutil.which(tool):
            return f"needs {tool} (scripts/system-deps)"
    return None


def _lab(tmp_path_factory: pytest.TempPathFactory, shape: str, edge_host: str) -> Iterator[Lab]:
    """A fresh lab of ``shape`` on a free network; ``Lab.host``/``address``: its edge host."""
    reason = _can_run()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp(f"lab-{shape}")
    subnet, bridge = _free_network()
    inv_dir = base / "inventory"
    inv_dir.mkdir()
    (inv_dir / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
    env = {
        **os.environ,
        "INFERSTACK_LAB_DIR": str(base / "state"),
        "INFERSTACK_LAB_SUBNET": subnet,
        "INFERSTACK_LAB_BRIDGE": bridge,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    inventory = inv_dir / "hosts.yml"
    lab = Lab(dir=base, inventory=inventory, env=env, address="", host=edge_host)
    up = lab.lab("up", "--shape", shape)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        lab.address = lab.host_address(edge_host)
        yield lab
    finally:
        down = lab.lab("down")
        assert down.returncode == 0, down.stderr[-3000:]
        leftover = subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False)
        assert leftover.returncode != 0, "lab down left the bridge behind"


# Module scope: one lab at a time on the 2-core CI machine.
@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The single-host lab (everything on lab1)."""
    yield from _lab(tmp_path_factory, "single", "lab1")


@pytest.fixture(scope="module")
def multi_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The multi-host lab: edge1, gw1, gw2, engine1, engine2, mon1 (monitoring, cache, loadgen)."""
    yield from _lab(tmp_path_factory, "multi", "edge1")
