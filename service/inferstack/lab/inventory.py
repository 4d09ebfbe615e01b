"""The lab's inventory: generated hosts file next to the committed group_vars of inventory/lab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from inferstack.lab.shapes import ALL_GROUPS, HostSpec

HEADER = (
    "# Written by `inferstack lab up`; rewritten on every `lab up`, removed by `lab down`.\n"
    "# Settings for the lab live in group_vars/inferstack/ next to this file.\n"
)


def render(
    shape: str,
    hosts: tuple[HostSpec, ...],
    ssh_key: Path,
    key_id: str,
    key_digest: str,
    redis_password: str,
) -> str:
    children: dict[str, Any] = {
        group: {"hosts": {h.name: None for h in hosts if group in h.groups}} for group in ALL_GROUPS
    }
    doc = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(ssh_key),
                "inferstack_lab_shape": shape,
            },
            "hosts": {h.name: {"ansible_host": h.address} for h in hosts},
            "children": {
                "inferstack": {
                    "vars": {
                        "gateway_api_keys": [{"id": key_id, "sha256": key_digest}],
                        "health_api_key_file": str(ssh_key.parent / "api-key"),
                        "redis_password": redis_password,
                    },
                    "children": children,
                }
            },
        }
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
