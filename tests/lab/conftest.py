"""The lab end to end: fresh Debian 12 hosts (systemd-nspawn) provisioned by site.yml over SSH.

The test lab has its own state directory, bridge and subnet, so it runs beside an operator's
lab. Needs root and systemd-nspawn (CI has both); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "inferstack"), "lab", "exec", self.host, "--", *cmd],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "inferstack"), "lab", *args, "--inventory", str(self.inventory)],
            env=self.env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "debootstrap", "iptables"):
        if not shutil.which(tool):
            return f"needs {tool} (scripts/system-deps)"
    return None


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _can_run()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("lab")
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
    lab = Lab(dir=base, inventory=inv_dir / "hosts.yml", env=env, address=f"{subnet}.11")
    up = lab.lab("up", "--shape", "single")
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield lab
    finally:
        down = lab.lab("down")
        assert down.returncode == 0, down.stderr[-3000:]
        leftover = subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False)
        assert leftover.returncode != 0, "lab down left the bridge behind"
