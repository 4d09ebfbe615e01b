"""The redis role's files, rendered by ansible-playbook (tasks_from: render) on localhost and
run with the real redis-server on loopback; the gateway caches in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import chat, post
from tests.procs import Processes, free_port, redis_command

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: redis
        tasks_from: render
"""


def render(tmp: Path, **overrides: Any) -> subprocess.CompletedProcess[str]:
    """Run the render entry point with the shared topology vars plus ``overrides``."""
    out = tmp / "rendered"
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    extra = {
        "inferstack_address": "127.0.0.1",
        "inferstack_redis_port": 6379,
        "redis_render_dir": str(out),
        "redis_dir": str(data),
        "redis_pidfile": str(tmp / "redis.pid"),
        **overrides,
    }
    (tmp / "vars.json").write_text(json.dumps(extra))
    (tmp / "play.yml").write_text(PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_INVENTORY": "localhost,",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "play.yml", "-e", "@vars.json"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _changed(result: subprocess.CompletedProcess[str]) -> int:
    for line in result.stdout.splitlines():
        if line.startswith("localhost") and "changed=" in line:
            return int(line.split("changed=")[1].split()[0])
    raise AssertionError(result.stdout)


def test_rendered_config_runs_redis_as_a_cache(tmp_path: Path, procs: Processes) -> None:
    port = free_port()
    first = render(tmp_path, redis_port=port)
    assert first.returncode == 0, first.stdout + first.stderr
    conf = tmp_path / "rendered" / "redis.conf"
    text = conf.read_text()
    assert "bind 127.0.0.1\n" in text
    assert "maxmemory 256mb" in text and "maxmemory-policy allkeys-lru" in text
    assert (
        (tmp_path / "rendered/redis-server.service.d/inferstack.conf")
        .read_text()
        .endswith("[Unit]\nPartOf=inferstack.target\n")
    )
    assert (
        (tmp_path / "rendered/inferstack.target.d/redis.conf")
        .read_text()
        .endswith("[Unit]\nWants=redis-server.service\n")
    )
    again = render(tmp_path, redis_port=port)
    assert again.returncode == 0 and _changed(again) == 0, again.stdout

    redis = procs.redis(port=port, conf=conf)
    assert redis_command(port, "PING") == b"+PONG\r\n"
    assert redis_command(port, "CONFIG", "GET", "maxmemory").endswith(b"268435456\r\n")
    assert redis_command(port, "CONFIG", "GET", "maxmemory-policy").endswith(b"allkeys-lru\r\n")
    assert redis_command(port, "CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert redis_command(port, "CONFIG", "GET", "protected-mode").endswith(b"yes\r\n")
    assert redis.popen.poll() is None


def test_password_protects_it_and_the_gateway_uses_it(tmp_path: Path, procs: Processes) -> None:
    port = free_port()
    password = 'pa ss"wo\\rd'
    result = render(tmp_path, redis_port=port, redis_password=password, redis_maxmemory="64MB")
    assert result.returncode == 0, result.stdout + result.stderr
    procs.redis(port=port, conf=tmp_path / "rendered" / "redis.conf")
    assert redis_command(port, "PING").startswith(b"-NOAUTH")
    assert redis_command(port, "AUTH", "wrong").startswith(b"-WRONGPASS")
    assert redis_command(port, "AUTH", password) == b"+OK\r\n"  # quoting survived
    sim = procs.sim()
    gw = procs.gateway(
        [sim],
        workers=2,
        env={
            "INFERSTACK_CACHE_BACKEND": "redis",
            "INFERSTACK_CACHE_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "INFERSTACK_CACHE_REDIS_PASSWORD": password,
        },
    )
    body = chat()
    assert [post(gw.url, body).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"redis_maxmemory": "lots"}, "redis_maxmemory"),
        ({"redis_maxmemory": "0"}, "redis_maxmemory"),
        ({"redis_maxmemory_policy": "noeviction"}, "redis_maxmemory_policy"),
        ({"redis_bind_addresses": ["cache01.example"]}, "redis_bind_addresses"),
        ({"redis_bind_addresses": ["10.0.0.9", "127.0.0.1"]}, "redis_password"),
    ],
    ids=["maxmemory-format", "maxmemory-zero", "noeviction", "bind-name", "remote-no-password"],
)
def test_preflight_names_the_variable(
    tmp_path: Path, overrides: dict[str, object], named: str
) -> None:
    result = render(tmp_path, **overrides)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (tmp_path / "rendered" / "redis.conf").exists()


def test_remote_bind_with_a_password_passes_preflight(tmp_path: Path) -> None:
    result = render(tmp_path, redis_bind_addresses=["10.0.0.9", "127.0.0.1"], redis_password="x")
    assert result.returncode == 0, result.stdout
    assert "bind 10.0.0.9 127.0.0.1\n" in (tmp_path / "rendered" / "redis.conf").read_text()
