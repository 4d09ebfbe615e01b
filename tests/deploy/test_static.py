"""The Ansible bundle without hosts: lint (production profile) and syntax of every playbook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=ROOT, capture_output=True, text=True, check=False, timeout=240
    )


def test_ansible_lint_production_profile() -> None:
    r = _run(str(BIN / "ansible-lint"), "--offline", "--profile", "production", "-f", "pep8",
             "roles", "playbooks")  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str) -> None:
    inventory = "inventory/example/hosts.yml"
    r = _run(str(BIN / "ansible-playbook"), "-i", inventory, "--syntax-check",
             f"playbooks/{playbook}")  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
