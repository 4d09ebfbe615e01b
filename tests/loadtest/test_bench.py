"""``inferstack bench`` end to end: real simulators and gateway on loopback, real processes."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import TEST_KEY, Proc, Processes, processes

PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    sim: Proc
    gateway: Proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway with the test keys in front of one simulator with fixed timing."""
    with processes(tmp_path_factory.mktemp("stack")) as ps:
        sim = ps.sim("--ttft-ms", "20", "--itl-ms", "5")
        yield Stack(sim, ps.gateway([sim]))


def bench(
    args: str,
    out: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cli: tuple[str, ...] = ("-m", "inferstack.loadtest"),
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python -m inferstack.loadtest ARGS`` (what ``inferstack bench ARGS`` executes)."""
    proc = subprocess.run(
        [sys.executable, *cli, *shlex.split(args), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    doc = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    return proc, doc


def test_fixed_concurrency_through_the_gateway(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc, doc = bench(
        f"run --target {stack.gateway.url} --api-key {TEST_KEY} -c 4 --num-prompts 12 "
        "--input-len 16 --output-len 8 --ignore-eos",
        out=out,
        cli=("-m", "inferstack", "bench"),
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "============ Serving Benchmark Result ============" in text
    assert "Successful requests:                     12        " in text
    assert "Maximum request concurrency:             4         " in text
    assert "Mean TTFT (ms):" in text and "P99 ITL (ms):" in text
    assert "Request rate configured" not in text
    assert doc["model"] == "sim-model"  # from GET /v1/models
    (level,) = doc["levels"]
    m = level["metrics"]
    assert (m["completed"], m["failed"]) == (12, 0)
    assert m["total_output_tokens"] == 12 * 8  # server usage
    assert m["max_concurrent_requests"] == 4
    assert 20 <= m["median_ttft_ms"] < 300
    assert len(level["requests"]) == 12 and all(r["usage"] for r in level["requests"])
    assert level["client"]["processes"] == 1 and not level["client"]["saturated"]
    # files
    for name in CHART_NAMES:
        assert (out / "charts" / f"{name}.png").read_bytes().startswith(PNG)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Serving Benchmark Result" in html
    assert TEST_KEY not in html and TEST_KEY not in (out / "result.json").read_text()
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert len(rows) == 12 and {r["output_tokens"] for r in rows} == {"8"}
    assert (out / "result.txt").read_text().startswith("============ Serving")
    levels = list(csv.DictReader((out / "levels.csv").open()))
    assert levels[0]["completed"] == "12"


CHART_NAMES = (
    "throughput_vs_latency",
    "rate_vs_errors",
    "concurrency_vs_throughput",
    "latency_over_time",
)


def test_fixed_rate_with_burstiness_and_cap(stack: Stack, tmp_path: Path) -> None:
    proc, doc = bench(
        f"run --target {stack.gateway.url} --endpoint completions --request-rate 25 "
        "--burstiness 0.5 --max-concurrency 3 --num-prompts 30 --input-len 8 --output-len 6 "
        "--ignore-eos --goodput ttft:5000 --no-charts --progress-interval 0.3",
        env={**os.environ, "INFERSTACK_BENCH_API_KEY": TEST_KEY},
        out=tmp_path / "rate",
    )
    assert proc.returncode == 0, proc.stderr
    assert "/30 requests, 0 failed" in proc.stderr  # progress lines
    assert "Request rate configured (RPS):           25.00     " in proc.stdout
    assert "Maximum request concurrency:             3         " in proc.stdout
    assert "Request goodput (req/s):" in proc.stdout
    assert "Client-side Queueing" in proc.stdout
    (level,) = doc["levels"]
    m = level["metrics"]
    assert (m["completed"], m["failed"]) == (30, 0)
    assert m["max_concurrent_requests"] <= 3
    assert m["duration"] >= 30 / 25 * 0.9  # arrivals spread over n/rate seconds
    assert m["request_goodput"] == pytest.approx(m["request_throughput"])
    assert level["kind"] == "rate" and level["request_rate"] == 25


def test_sweep_finds_the_engines_capacity(procs: Processes, tmp_path: Path) -> None:
    """An engine with 4 sequence slots: doubling past 4 users adds no throughput."""
    sim = procs.sim("--ttft-ms", "20", "--itl-ms", "10", "--max-num-seqs", "4")
    proc, doc = bench(
        f"sweep --target {sim.url} --max-level 16 --rounds 3 --min-requests 6 --input-len 8 "
        "--output-len 10 --ignore-eos --slo-ttft-ms 5000 --progress-interval 0",
        out=tmp_path / "sweep",
    )
    assert proc.returncode == 0, proc.stderr
    sweep = doc["sweep"]
    assert [lv["users"] for lv in doc["levels"]] == [1, 2, 4, 8]
    assert sweep["max_stable_concurrency"] == 4
    assert sweep["recommended"] == [2, 3]
    assert "gain" in sweep["stopped_because"][0]
    assert "Maximum stable concurrency: 4" in proc.stdout
    assert "Recommended production concurrency: 2-3 (70-80 % of 4)" in proc.stdout
    html = (tmp_path / "sweep" / "report.html").read_text()
    assert "Maximum stable concurrency: <b>4</b>" in html


def test_sweep_stops_on_failures(procs: Processes, tmp_path: Path) -> None:
    sim = procs.sim("--ttft-ms", "5", "--itl-ms", "1", "--error-rate", "0.5")
    proc, doc = bench(
        f"sweep --target {sim.url} --min-requests 20 --input-len 8 --output-len 4 --no-charts",
        out=tmp_path / "failing",
    )
    assert proc.returncode == 0, proc.stderr  # some requests succeeded
    assert len(doc["levels"]) == 1
    assert doc["sweep"]["max_stable_concurrency"] == 0 and doc["sweep"]["recommended"] is None
    assert "success" in doc["sweep"]["stopped_because"][0]
    assert "Error x" in proc.stdout and "HTTP 500" in proc.stdout
    assert "No stable level" in proc.stdout


def test_local_worker_processes(stack: Stack, tmp_path: Path) -> None:
    """A Locust master with two worker processes, two levels (users restart in between)."""
    proc, doc = bench(
        f"run --target {stack.sim.url} -c 6 -c 3 --num-prompts 18 --processes 2 --input-len 8 "
        "--output-len 5 --ignore-eos --progress-interval 0 --no-charts",
        out=tmp_path / "procs",
    )
    assert proc.returncode == 0, proc.stderr
    assert [lv["users"] for lv in doc["levels"]] == [6, 3]
    for level in doc["levels"]:
        assert level["metrics"]["completed"] == 18
        nodes = level["client"]["nodes"]
        assert len(nodes) == 2 and sum(n["users"] for n in nodes) == level["users"]
        assert len({r["worker"] for r in level["requests"]}) == 2  # both processes sent
        assert sorted(r["index"] for r in level["requests"]) == list(range(18))
        assert level["metrics"]["max_concurrent_requests"] <= level["users"]


def test_a_saturated_generator_withholds_latencies(stack: Stack, tmp_path: Path) -> None:
    """Honesty: with an impossible loop-lag limit every level counts as saturated."""
    proc, doc = bench(
        f"sweep --target {stack.sim.url} --min-requests 4 --input-len 4 --output-len 3 "
        "--lag-limit-ms 0.000001 --no-charts",
        out=tmp_path / "sat",
    )
    assert proc.returncode == 0, proc.stderr
    (level,) = doc["levels"]
    assert level["client"]["saturated"] and "event-loop lag" in level["client"]["reasons"][0]
    assert "withheld: the load generator saturated" in proc.stdout
    assert "Mean TTFT (ms)" not in proc.stdout and "-- SATURATED" in proc.stdout
    assert "load generator saturated" in doc["sweep"]["stopped_because"][0]
    assert level["metrics"]["mean_ttft_ms"] > 0  # kept in the JSON, flagged
    assert "<td>withheld</td>" in (tmp_path / "sat" / "report.html").read_text()


def test_bad_input_is_one_line(tmp_path: Path, stack: Stack) -> None:
    proc, _ = bench("run --target 127.0.0.1:9", out=tmp_path / "a")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("inferstack bench: invalid target: ")
    assert "Traceback" not in proc.stderr
    proc, _ = bench("run --target http://127.0.0.1:9 --dataset sharegpt", out=tmp_path / "b")
    assert proc.returncode == 2 and "dataset_path" in proc.stderr
    gw = stack.gateway
    proc, _ = bench(f"run --target {gw.url} --api-key sk-wrong", out=tmp_path / "c")
    assert proc.returncode == 2
    assert "/v1/models answered 401" in proc.stderr and "Traceback" not in proc.stderr
    # with --model the requests themselves fail, and say why
    proc, doc = bench(
        f"run --target {gw.url} --api-key sk-wrong --model sim-model --num-prompts 3 "
        "--input-len 4 --output-len 2 --no-charts",
        out=tmp_path / "d",
    )
    assert proc.returncode == 1
    assert doc["levels"][0]["metrics"]["failed"] == 3
    assert "HTTP 401" in proc.stdout
    # the key from a file (INFERSTACK_BENCH_API_KEY_FILE): unreadable is one line, readable works
    env = {**os.environ, "INFERSTACK_BENCH_API_KEY_FILE": str(tmp_path / "missing")}
    proc, _ = bench(f"run --target {gw.url}", out=tmp_path / "e", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "INFERSTACK_BENCH_API_KEY_FILE" in proc.stderr and "cannot read" in proc.stderr
    (tmp_path / "key").write_text(TEST_KEY + "\n")
    env["INFERSTACK_BENCH_API_KEY_FILE"] = str(tmp_path / "key")
    proc, doc = bench(
        f"run --target {gw.url} --num-prompts 2 --input-len 4 --output-len 2 --no-charts",
        out=tmp_path / "f",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert doc["levels"][0]["metrics"]["completed"] == 2


def test_cli_does_not_import_locust_and_help_works() -> None:
    code = "import sys, inferstack.cli; print('gevent' in sys.modules or 'locust' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    helped = subprocess.run(
        [sys.executable, "-m", "inferstack", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0
    for command in ("run", "sweep", "worker", "report"):
        assert command in helped.stdout


def test_plain_locust_with_the_locustfile(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim
    args = (
        f"-f {REPO / 'loadtest' / 'locustfile.py'} --host {sim.url} --headless -u 2 -r 2 -t 2s "
        f"--input-len 8 --output-len 4 --ignore-eos --csv {tmp_path / 'locust'} --only-summary"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "locust", *shlex.split(args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    for name in ("TTFT", "TPOT", "ITL", "E2E"):
        assert rows[name]["Type"] == "SSE" and int(rows[name]["Request Count"]) > 0
        assert rows[name]["Failure Count"] == "0"
    assert float(rows["TTFT"]["Median Response Time"]) >= 20
