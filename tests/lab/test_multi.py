"""The multi-host lab end to end: edge1 -> gw1, gw2 -> engine1, engine2 (two instances each),
Redis, Prometheus and the load generator on mon1. site.yml -> health.yml -> the cache shared by
both gateways -> rolling restart of engines and gateways under load through the edge, without
a failed request -> a load test from mon1 through playbooks/loadtest.yml."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx

from tests.lab.conftest import MODEL, Lab

GATEWAYS = ("gw1", "gw2")


def _main_pids(lab: Lab, host: str, *units: str) -> list[str]:
    r = lab.exec("systemctl", "show", "--property=MainPID", "--value", *units, host=host)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_site_deploys_every_host_and_health_passes(multi_lab: Lab) -> None:
    health = multi_lab.deploy_and_check()
    # every layer on its own host was checked
    for host in ("edge1", "gw1", "gw2", "engine1", "engine2", "mon1"):
        assert re.search(rf"^\s+ok\s+\w+\s+{host}\s", health, re.M), host


def test_the_gateways_share_one_cache(multi_lab: Lab) -> None:
    """A deterministic answer stored through gw1 is a hit on gw2 (Redis on mon1)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"cache {uuid.uuid4()}"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    auth = {"Authorization": f"Bearer {multi_lab.api_key}"}
    seen = []
    for gw in GATEWAYS:
        url = f"http://{multi_lab.host_address(gw)}:8000/v1/chat/completions"
        r = httpx.post(url, json=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        seen.append((r.headers.get("x-cache"), r.json()["choices"][0]["message"]["content"]))
    assert [s[0] for s in seen] == ["MISS", "HIT"]
    assert seen[0][1] == seen[1][1]


def test_rolling_restart_under_load_through_the_edge_fails_no_request(multi_lab: Lab) -> None:
    """Engines drained through the gateways' drain file, gateways restarted behind the edge
    (lame duck, no nginx reload): 8 keep-alive clients through the edge see no failure."""
    before = {gw: _main_pids(multi_lab, gw, "inferstack-gateway") for gw in GATEWAYS}
    engines = {
        h: _main_pids(multi_lab, h, "inferstack-engine@0", "inferstack-engine@1")
        for h in ("engine1", "engine2")
    }
    r, ok, failures = multi_lab.rolling_restart_under_load(clients=8)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ok > 100
    assert failures == [], f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    # everything was restarted, the edge was not reloaded (no --tags edge)
    for gw, pids in before.items():
        assert _main_pids(multi_lab, gw, "inferstack-gateway") != pids, gw
    for host, pids in engines.items():
        now = _main_pids(multi_lab, host, "inferstack-engine@0", "inferstack-engine@1")
        assert all(a != b for a, b in zip(now, pids, strict=True)), host
    assert "Reload nginx (graceful)" not in r.stdout


def test_loadtest_playbook_runs_from_the_loadgen_host(multi_lab: Lab, tmp_path: Path) -> None:
    args = ["-c", "4", "--num-prompts", "16", "--input-len", "64", "--output-len", "8",
            "--ignore-eos"]  # fmt: skip
    run = f"lab-{uuid.uuid4().hex[:8]}"
    r = multi_lab.playbook(
        "loadtest.yml", "-e", "loadgen_mode=run", "-e", f"loadgen_run_name={run}",
        "-e", f"loadgen_fetch_dir={tmp_path}", "-e", json.dumps({"loadgen_bench_args": args}),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-5000:]
    assert "Serving Benchmark Result" in r.stdout
    fetched = tmp_path / run
    doc = json.loads((fetched / "result.json").read_text())
    (level,) = doc["levels"]
    assert level["metrics"]["completed"] == 16
    assert level["metrics"]["failed"] == 0
    assert (fetched / "report.html").exists()
