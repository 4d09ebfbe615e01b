"""The lab's private network: a bridge on this machine, with NAT so hosts reach the package
mirrors. Only lab addresses and loopback ever receive test traffic."""

from __future__ import annotations

import os
from pathlib import Path

from inferstack.lab.run import ok, run
from inferstack.lab.shapes import BRIDGE_ADDRESS, PREFIX_LEN, SUBNET_PREFIX

BRIDGE = os.environ.get("INFERSTACK_LAB_BRIDGE", "inferstack0")
SUBNET = f"{SUBNET_PREFIX}.0/{PREFIX_LEN}"
FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_NAT_RULE = ["POSTROUTING", "-s", SUBNET, "!", "-o", BRIDGE, "-j", "MASQUERADE",
             "-m", "comment", "--comment", "inferstack-lab"]  # fmt: skip


def up(state_dir: Path) -> None:
    if not ok(["ip", "link", "show", BRIDGE]):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    if f"{BRIDGE_ADDRESS}/" not in run(["ip", "-o", "addr", "show", "dev", BRIDGE]):
        run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    saved = state_dir / "ip_forward.before"
    if not saved.exists():
        saved.write_text(FORWARD.read_text())
    FORWARD.write_text("1\n")
    if not ok(["iptables", "-t", "nat", "-C", *_NAT_RULE]):
        run(["iptables", "-t", "nat", "-A", *_NAT_RULE])


def down(state_dir: Path) -> None:
    while ok(["iptables", "-t", "nat", "-C", *_NAT_RULE]):
        run(["iptables", "-t", "nat", "-D", *_NAT_RULE])
    saved = state_dir / "ip_forward.before"
    if saved.exists():
        FORWARD.write_text(saved.read_text())
        saved.unlink()
    if ok(["ip", "link", "show", BRIDGE]):
        run(["ip", "link", "del", BRIDGE])


def is_up() -> bool:
    return ok(["ip", "link", "show", BRIDGE])
