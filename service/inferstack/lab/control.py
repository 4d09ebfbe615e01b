"""``inferstack lab up|down|status``: make, list and remove the lab's hosts."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inferstack.gateway.auth import hash_key, new_key
from inferstack.lab import inventory, network
from inferstack.lab.machines import Machine
from inferstack.lab.rootfs import ensure_base
from inferstack.lab.run import LabError, run
from inferstack.lab.shapes import HostSpec, shape

REQUIRED_TOOLS = ("systemd-nspawn", "nsenter", "ip", "iptables", "ssh-keygen", "zstd", "tar")
LAB_KEY_ID = "lab"


def state_dir() -> Path:
    return Path(os.environ.get("INFERSTACK_LAB_DIR", "/var/lib/inferstack-lab"))


def repo_inventory() -> Path:
    return Path(__file__).resolve().parents[3] / "inventory" / "lab" / "hosts.yml"


def _log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _state() -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads((state_dir() / "state.json").read_text())
        return data
    except FileNotFoundError:
        return {}


def _machines() -> list[Machine]:
    hosts = _state().get("hosts", [])
    assert isinstance(hosts, list)
    return [Machine(HostSpec(h["name"], h["address"], tuple(h["groups"])), state_dir())
            for h in hosts]  # fmt: skip


def preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network bridge, systemd-nspawn)")
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: run scripts/system-deps")


def up(shape_name: str, inventory_path: Path | None = None) -> Path:
    """Fresh hosts of the given shape, booted and reachable over SSH; returns the inventory."""
    preflight()
    hosts = shape(shape_name)
    if _state():
        current = _state().get("shape")
        raise LabError(
            f"a lab ({current}) is already up: `inferstack lab down` first, or use it as it is"
        )
    started = time.monotonic()
    sd = state_dir()
    sd.mkdir(parents=True, exist_ok=True)
    tarball = ensure_base()
    key = sd / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "inferstack-lab", "-f", str(key)])
    api_key_file = sd / "api-key"
    if not api_key_file.exists():
        api_key_file.write_text(new_key() + "\n")
        api_key_file.chmod(0o600)
    api_key = api_key_file.read_text().strip()
    redis_password_file = sd / "redis-password"
    if not redis_password_file.exists():
        redis_password_file.write_text(secrets.token_urlsafe(24) + "\n")
        redis_password_file.chmod(0o600)
    (sd / "state.json").write_text(
        json.dumps({"shape": shape_name, "hosts": [h.__dict__ for h in hosts]}, default=list)
    )
    network.up(sd)
    machines = [Machine(h, sd) for h in hosts]
    pub = key.with_suffix(".pub").read_text()
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        list(pool.map(lambda m: m.prepare(tarball, hosts, pub), machines))
    for m in machines:
        m.boot()
    for m in machines:
        state = m.wait_running()
        _log(f"{m.spec.name} {m.spec.address} {state} ({', '.join(m.spec.groups)})")
    path = inventory_path or repo_inventory()
    inventory.write(
        path,
        inventory.render(
            shape_name,
            hosts,
            key,
            LAB_KEY_ID,
            hash_key(api_key),
            redis_password_file.read_text().strip(),
        ),
    )
    _log(f"{len(machines)} host(s) up in {time.monotonic() - started:.1f} s; inventory {path}")
    return path


def down(inventory_path: Path | None = None) -> None:
    """Stop every lab host, remove its files, the bridge and the NAT rule. Idempotent."""
    preflight()
    sd = state_dir()
    for m in _machines():
        m.stop()
        m.harvest_debs()
        m.remove()
        _log(f"{m.spec.name} removed")
    network.down(sd)
    (sd / "state.json").unlink(missing_ok=True)
    (inventory_path or repo_inventory()).unlink(missing_ok=True)


def status() -> list[dict[str, str]]:
    rows = []
    for m in _machines():
        running = m.pid1() is not None
        state = m.exec("systemctl", "is-system-running", check=False).strip() if running else "off"
        rows.append({"host": m.spec.name, "address": m.spec.address, "state": state,
                     "groups": ",".join(m.spec.groups)})  # fmt: skip
    return rows


def machine(name: str) -> Machine:
    for m in _machines():
        if m.spec.name == name:
            return m
    raise LabError(f"no lab host {name!r}; `inferstack lab status` lists them")
