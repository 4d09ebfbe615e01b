"""playbooks/loadtest.yml on this machine: two loadgen "hosts" (local connections), a Locust
master and a worker, against a gateway (with API keys) and a simulator; the results come back
to the fetch directory."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.procs import TEST_KEY, Processes, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = "playbooks/loadtest.yml"


def test_loadtest_playbook_master_worker_and_fetch(procs: Processes, tmp_path: Path) -> None:
    sim = procs.sim("--ttft-ms", "20", "--itl-ms", "5")
    gateway = procs.gateway([sim], workers=1)  # with API keys: a run without the key fails
    host = {
        "ansible_connection": "local",
        "ansible_host": "127.0.0.1",  # inferstack_address (playbook group_vars) follows it
        "ansible_python_interpreter": sys.executable,
    }
    inventory = {
        "all": {
            "vars": {
                "loadgen_install": False,
                "loadgen_venv": sys.prefix,
                "loadgen_user": "",
                "loadgen_results_dir": str(tmp_path / "results"),
                "loadgen_fetch_dir": str(tmp_path / "fetched"),
                "loadgen_target": gateway.url,
                "loadgen_api_key": TEST_KEY,
                "loadgen_mode": "run",
                "loadgen_bench_args": shlex.split(
                    "-c 3 --num-prompts 9 --input-len 8 --output-len 4 --ignore-eos"
                ),
                "loadgen_master_port": free_port(),
                "loadgen_max_runtime_s": 120,
                "loadgen_poll_s": 1,
                "loadgen_run_name": "t1",
            },
            # lg1, the master, keeps the default process count (its vCPUs): only the
            # workers' own counts may matter.
            "children": {
                "loadgen": {"hosts": {"lg1": host, "lg2": {**host, "loadgen_processes": 2}}}
            },
        }
    }
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), PLAYBOOK],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    fetched = tmp_path / "fetched" / "t1"
    doc = json.loads((fetched / "result.json").read_text())
    (level,) = doc["levels"]
    assert level["metrics"]["completed"] == 9
    # the master sends nothing itself: every request came from the 2 workers of "lg2"
    nodes = {n["node"] for n in level["client"]["nodes"]}
    assert len(nodes) == 2
    assert {r["worker"] for r in level["requests"]} <= nodes
    assert (fetched / "report.html").exists() and (fetched / "requests.csv").exists()
    assert (fetched / "charts" / "latency_over_time.png").exists()
    assert "Serving Benchmark Result" in proc.stdout
    assert TEST_KEY not in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / ".api-key").exists(), "the run left its key file"


def test_loadtest_playbook_syntax() -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", PLAYBOOK],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
