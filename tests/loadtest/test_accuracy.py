"""Measurement accuracy: against a simulator with fixed TTFT and inter-token latency, the
figures `inferstack bench` reports must match the configured values within 5 % or 2 ms
(whichever is larger), from 1 to 256 concurrent streams on this machine."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import Processes

TTFT_MS = 200.0
ITL_MS = 40.0
OUTPUT_TOKENS = 16
LEVELS = (1, 16, 64, 256)


def within(measured: float, expected: float) -> bool:
    return abs(measured - expected) <= max(0.05 * expected, 2.0)


@pytest.mark.slow
def test_ttft_and_itl_match_the_simulator_from_1_to_256_streams(
    procs: Processes, tmp_path: Path
) -> None:
    # Fixed mode schedules every stream on its own clock; enough slots for every stream.
    sim = procs.sim("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--max-num-seqs", "1024")
    request_s = (TTFT_MS + (OUTPUT_TOKENS - 1) * ITL_MS) / 1000
    args = [sys.executable, "-m", "inferstack.loadtest", "run", "--target", sim.url]
    args += shlex.split("--endpoint completions --input-len 16 --ignore-eos --no-charts")
    args += ["--progress-interval", "0"]
    # one event per token on /v1/completions (chat adds an empty role event before the first)
    args += ["--output-len", str(OUTPUT_TOKENS), "--out", str(tmp_path / "acc")]
    # levels of 2.5 request durations; users start spread over one request's duration
    args += ["--duration", str(2.5 * request_s), "--ramp-up", str(request_s)]
    for c in LEVELS:
        args += ["-c", str(c)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "acc" / "result.json").read_text())
    report = []
    bad = []
    for level in doc["levels"]:
        m, client = level["metrics"], level["client"]
        figures = {
            "mean TTFT": (m["mean_ttft_ms"], TTFT_MS),
            "median TTFT": (m["median_ttft_ms"], TTFT_MS),
            "mean ITL": (m["mean_itl_ms"], ITL_MS),
            "median ITL": (m["median_itl_ms"], ITL_MS),
            "mean TPOT": (m["mean_tpot_ms"], ITL_MS),
        }
        line = f"c={level['users']}: " + ", ".join(f"{k} {v:.1f}" for k, (v, _) in figures.items())
        line += (
            f", p99 TTFT {m['p99_ttft_ms']:.1f}, p99 ITL {m['p99_itl_ms']:.1f},"
            f" client CPU {client['cpu_max']:.0%}, loop lag p99 {client['lag_p99_ms']:.1f} ms,"
            f" {m['completed']} requests"
        )
        report.append(line)
        if m["failed"] or m["completed"] < level["users"]:
            bad.append(f"c={level['users']}: {m['failed']} failed, {m['completed']} completed")
        if client["saturated"]:
            bad.append(f"c={level['users']}: the load generator saturated: {client['reasons']}")
        bad += [
            f"c={level['users']}: {name} {v:.2f} ms, configured {exp:.0f} ms"
            for name, (v, exp) in figures.items()
            if not within(v, exp)
        ]
    assert [lv["users"] for lv in doc["levels"]] == list(LEVELS)
    print("\n".join(report))
    assert not bad, "\n".join([*bad, "", *report])
