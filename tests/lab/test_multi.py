"""The multi-host lab end to end: edge1 -> gw1, gw2 -> engine1, engine2 (two instances each),
Redis, Prometheus and the load generator on mon1. site.yml -> health.yml -> the cache shared by
both gateways -> rolling restart of engines and gateways under load through the edge, without
a failed request -> a load test from mon1 through playbooks/loadtest.yml."""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import time
import uuid
from pathlib import Path

import httpx

from tests.lab.conftest import MODEL, Lab, load

GATEWAYS = ("gw1", "gw2")


def _main_pids(lab: Lab, host: str, *units: str) -> list[str]:
    r = lab.exec("systemctl", "show", "--property=MainPID", "--value", *units, host=host)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_site_deploys_every_host_and_health_passes(multi_lab: Lab) -> None:
    r = multi_lab.playbook("site.yml")
    assert r.returncode == 0, r.stdout[-5000:]
    health = multi_lab.playbook("health.yml")
    assert health.returncode == 0, health.stdout[-5000:]
    m = re.search(r"(\d+)/(\d+) checks passed", health.stdout)
    assert m and m.group(1) == m.group(2), health.stdout[-3000:]
    # every layer on its own host was checked
    for host in ("edge1", "gw1", "gw2", "engine1", "engine2", "mon1"):
        assert re.search(rf"^\s+ok\s+\w+\s+{host}\s", health.stdout, re.M), host


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
    url = multi_lab.edge_url + "/v1/chat/completions"
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(load, url, multi_lab.api_key, stop) for _ in range(8)]
        r = multi_lab.playbook("rolling-restart.yml")
        time.sleep(2)
        stop.set()
        results = [f.result() for f in futures]
    assert r.returncode == 0, r.stdout[-4000:]
    ok = sum(n for n, _ in results)
    failures = [f for _, fs in results for f in fs]
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
