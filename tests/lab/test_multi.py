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


ENGINES = ("engine1", "engine2")
ENGINE_UNITS = ("inferstack-engine@0", "inferstack-engine@1")


def _pids(lab: Lab) -> dict[str, list[str]]:
    return {
        **{gw: lab.main_pids("inferstack-gateway", host=gw) for gw in GATEWAYS},
        **{host: lab.main_pids(*ENGINE_UNITS, host=host) for host in ENGINES},
    }


def _all_restarted(before: dict[str, list[str]], after: dict[str, list[str]]) -> None:
    for host, pids in before.items():
        assert all(a != b for a, b in zip(after[host], pids, strict=True)), host


def test_rolling_restart_under_load_through_the_edge_fails_no_request(multi_lab: Lab) -> None:
    """Engines drained through the gateways' drain file, gateways restarted behind the edge
    (lame duck, no nginx reload): 8 keep-alive clients through the edge see no failure."""
    before = _pids(multi_lab)
    r, ok, failures = multi_lab.playbook_under_load("rolling-restart.yml", clients=8)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ok > 100
    assert failures == [], f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    # everything was restarted, the edge was not reloaded (no --tags edge)
    _all_restarted(before, _pids(multi_lab))
    assert "Reload nginx (graceful)" not in r.stdout


def test_site_rolls_out_changed_units_one_at_a_time_under_load(multi_lab: Lab) -> None:
    """A change to every engine instance's environment and to the gateway unit, as a new build
    makes: site.yml marks the running units and restarts them one at a time at its end, so
    8 clients through the edge see no failure (restarted in place, all at once, they did)."""
    before = _pids(multi_lab)
    change = '{"vllm_extra_env": {"INFERSTACK_ROLLOUT": "1"}, "gateway_graceful_timeout_s": 599}'
    r, ok, failures = multi_lab.playbook_under_load("site.yml", "-e", change, clients=8)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ok > 100
    assert failures == [], f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    _all_restarted(before, _pids(multi_lab))
    for host in (*GATEWAYS, *ENGINES):
        assert multi_lab.pending_restarts(host) == [], host
    unit = multi_lab.exec("systemctl", "show", "-p", "TimeoutStopUSec", "--value",
                          "inferstack-gateway", host="gw2")  # fmt: skip
    assert unit.stdout.strip() == "10min 29s"  # the restarted gateway runs the new unit


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
