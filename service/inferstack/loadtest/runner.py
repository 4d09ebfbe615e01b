"""``inferstack bench``: datasets -> Locust generators -> levels or a sweep -> results.

Runs inside a gevent-patched process (``python -m inferstack.loadtest``). Generators are this
process (one Locust local runner), ``--processes N`` local worker processes under a Locust
master in this process, or ``--expect-workers N`` remote workers (``inferstack bench worker``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from inferstack import __version__
from inferstack.loadtest.bodies import PATHS, base_url, request_body
from inferstack.loadtest.control import Controller, LevelPlan, LevelRun
from inferstack.loadtest.datasets import (
    Sample,
    prompt_file_samples,
    random_samples,
    sharegpt_samples,
)
from inferstack.loadtest.metrics import error_counts, summarize
from inferstack.loadtest.options import BenchOptions
from inferstack.loadtest.resultblock import result_block
from inferstack.loadtest.sweep import LevelOutcome, SweepRules, judge, levels, recommendation

AUTO_RAMP_MAX_S = 120.0
RATE_POOL_MAX = 1024
"""Users serving an uncapped fixed-rate level (arrivals wait only if all of them are busy)."""

log = logging.getLogger("inferstack.loadtest")


class BenchError(RuntimeError):
    """A problem to report in one line (exit status 2)."""


def build_samples(opts: BenchOptions) -> list[Sample]:
    n = opts.num_prompts
    if opts.dataset == "random":
        return random_samples(
            n, opts.input_len, opts.effective_output_len, opts.range_ratio, opts.seed
        )
    assert opts.dataset_path is not None
    if opts.dataset == "sharegpt":
        return sharegpt_samples(opts.dataset_path, n, opts.output_len, opts.seed)
    return prompt_file_samples(opts.dataset_path, n, opts.effective_output_len)


def request_headers(opts: BenchOptions) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if opts.api_key:
        headers["Authorization"] = f"Bearer {opts.api_key}"
    headers.update(opts.headers)
    return headers


def first_model(
    base: str, headers: dict[str, str], timeout: float = 30.0, insecure: bool = False
) -> str:
    """The first model of GET /v1/models (what ``vllm bench serve`` uses without --model)."""
    req = urllib.request.Request(base + "/v1/models", headers=headers)
    context = None
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            data = json.load(resp)
        return str(data["data"][0]["id"])
    except urllib.error.HTTPError as exc:
        raise BenchError(
            f"GET {base}/v1/models answered {exc.code}: {exc.read()[:300]!r}"
        ) from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BenchError(f"could not read the model from {base}/v1/models: {exc}") from None


class _QuietSpawnWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


@contextlib.contextmanager
def generators(opts: BenchOptions) -> Iterator[tuple[Controller, int]]:
    """A controller over this run's Locust runner; yields it with the worker count to await."""
    from locust.env import Environment
    from locust.exception import RPCError

    from inferstack.loadtest.user import StreamUser, install
    from inferstack.localstack import free_port

    logging.getLogger("locust.runners").addFilter(_QuietSpawnWarning())
    env = Environment(user_classes=[StreamUser], catch_exceptions=True)
    procs: list[subprocess.Popen[bytes]] = []
    workers = 0
    if opts.processes > 1:
        port = free_port()
        runner: Any = env.create_master_runner("127.0.0.1", port)
        workers = opts.processes
        for _ in range(opts.processes):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "inferstack.loadtest",
                        "worker",
                        "--master-host",
                        "127.0.0.1",
                        "--master-port",
                        str(port),
                    ],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
    elif opts.expect_workers:
        try:
            runner = env.create_master_runner(opts.master_bind_host, opts.master_bind_port)
        except RPCError as exc:
            raise BenchError(
                f"cannot listen for workers on {opts.master_bind_host}:"
                f"{opts.master_bind_port}: {exc}"
            ) from None
        workers = opts.expect_workers
    else:
        runner = env.create_local_runner()
        install(env, runner, node=f"{socket.gethostname()}:{os.getpid()}")
    ctl = Controller(runner, progress_s=opts.progress_s, stall_s=2 * opts.timeout_s + 60)
    try:
        yield ctl, workers
    finally:
        runner.quit()
        for p in procs:
            _end(p)


def _end(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def client_check(run: LevelRun, opts: BenchOptions) -> dict[str, Any]:
    """The load generator's own figures, and whether they make its latencies untrustworthy."""
    nodes = run.nodes
    cpu_max = max((float(n["cpu"]) for n in nodes), default=0.0)
    lag_p99 = max((float(n["lag_p99_ms"]) for n in nodes), default=0.0)
    reasons = []
    if cpu_max >= opts.cpu_limit:
        reasons.append(f"generator process CPU {cpu_max:.0%} of a core >= {opts.cpu_limit:.0%}")
    if lag_p99 > opts.lag_limit_ms:
        reasons.append(
            f"generator event-loop lag p99 {lag_p99:.1f} ms > {opts.lag_limit_ms:.0f} ms"
        )
    pool_full = (
        not math.isinf(run.plan.rate)
        and opts.max_concurrency is None
        and any(int(n["max_in_flight"]) >= int(n["users"]) > 0 for n in nodes)
    )
    return {
        "processes": len(nodes),
        "cpu_max": cpu_max,
        "lag_p99_ms": lag_p99,
        "nodes": nodes,
        "saturated": bool(reasons),
        "reasons": reasons,
        "pool_exhausted": pool_full,
    }


def analyze(run: LevelRun, opts: BenchOptions) -> dict[str, Any]:
    plan = run.plan
    pcts = sorted({50.0, 90.0, 95.0, 99.0, *opts.percentiles})
    m = summarize(run.records, run.duration, goodput=opts.goodput or None, percentiles=pcts)
    rate_mode = not math.isinf(plan.rate)
    return {
        "label": plan.label,
        "kind": "rate" if rate_mode else "concurrency",
        "concurrency": (opts.max_concurrency if rate_mode else plan.users),
        "users": plan.users,
        "request_rate": plan.rate if rate_mode else None,
        "burstiness": plan.burstiness if rate_mode else None,
        "ramp_up_s": None if rate_mode else plan.ramp_s,
        "wall_start": run.wall_start,
        "metrics": m,
        "client": client_check(run, opts),
        "errors": error_counts(run.records),
        "requests": [asdict(r) for r in run.records],
    }


def level_block(level: dict[str, Any], opts: BenchOptions) -> str:
    client = level["client"]
    withheld = None
    if client["saturated"]:
        withheld = (
            "the load generator saturated ("
            + "; ".join(client["reasons"])
            + "): use --processes N or more workers"
        )
    metrics = list(opts.percentile_metrics)
    if level["kind"] == "rate" and opts.max_concurrency and "client_queue_time" not in metrics:
        metrics.append("client_queue_time")
    block = result_block(
        level["metrics"],
        max_concurrency=level["concurrency"],
        request_rate=level["request_rate"] if level["request_rate"] is not None else math.inf,
        goodput=bool(opts.goodput),
        percentile_metrics=metrics,
        percentiles=opts.percentiles,
        withheld=withheld,
    )
    lines = [block]
    lines.append(
        f"Load generator: {client['processes']} process(es), CPU max {client['cpu_max']:.0%} "
        f"of a core, event-loop lag p99 {client['lag_p99_ms']:.1f} ms"
        + (" -- SATURATED" if client["saturated"] else "")
    )
    if client["pool_exhausted"]:
        lines.append(
            f"Note: all {level['users']} users were busy at times; arrivals waited "
            "(see Client-side Queueing), set --max-concurrency to make the cap explicit."
        )
    if level["metrics"]["usage_missing"]:
        lines.append(
            f"Note: {level['metrics']['usage_missing']} answers had no usage; their output "
            "tokens are counted token events."
        )
    for err, count in level["errors"]:
        lines.append(f"Error x{count}: {err}")
    return "\n".join(lines)


def _plans(opts: BenchOptions) -> list[LevelPlan]:
    if opts.request_rate:
        out = []
        for i, rate in enumerate(opts.request_rate):
            requests = None if opts.duration_s else opts.num_prompts
            expected = requests or max(1, round(rate * (opts.duration_s or 0)))
            users = opts.max_concurrency or min(expected, RATE_POOL_MAX)
            out.append(
                LevelPlan(
                    users=users,
                    requests=requests,
                    duration_s=opts.duration_s,
                    rate=rate,
                    burstiness=opts.burstiness,
                    seed=opts.seed + i,
                    label=f"rate={rate:g}",
                )
            )
        return out
    return [
        LevelPlan(
            users=c,
            requests=None if opts.duration_s else opts.num_prompts,
            duration_s=opts.duration_s,
            ramp_s=opts.ramp_up_s or 0.0,
            label=f"c={c}",
        )
        for c in opts.levels_closed()
    ]


def run_sweep(
    ctl: Controller, opts: BenchOptions, emit: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rules = SweepRules(
        min_success=opts.min_success,
        ttft_p99_slo_ms=opts.slo_ttft_ms,
        min_gain=opts.min_gain,
        max_concurrency=opts.sweep_max,
    )
    results: list[dict[str, Any]] = []
    previous: LevelOutcome | None = None
    max_stable = 0
    stopped: list[str] = []
    ramp = opts.ramp_up_s or 0.0
    for c in levels(rules):
        plan = LevelPlan(
            users=c,
            requests=None if opts.duration_s else max(opts.min_requests, opts.rounds * c),
            duration_s=opts.duration_s,
            ramp_s=ramp,
            label=f"c={c}",
        )
        print(f"sweep: concurrency {c} ...", file=sys.stderr, flush=True)
        level = analyze(ctl.run_level(plan), opts)
        m = level["metrics"]
        outcome = LevelOutcome(
            concurrency=c,
            completed=m["completed"],
            failed=m["failed"],
            p99_ttft_ms=m["p99_ttft_ms"],
            output_throughput=m["output_throughput"],
            client_saturated=level["client"]["saturated"],
        )
        verdict = judge(outcome, previous, rules)
        level["verdict"] = asdict(verdict)
        if opts.ramp_up_s is None:  # auto: spread the next level over one request's duration
            ramp = min(AUTO_RAMP_MAX_S, m["median_e2el_ms"] / 1000)
        results.append(level)
        emit(level_block(level, opts))
        emit(
            f"sweep: concurrency {c}: "
            + ("stable" if verdict.passed else "stop: " + "; ".join(verdict.reasons))
        )
        if not verdict.passed:
            stopped = verdict.reasons
            break
        max_stable = c
        previous = outcome
    else:
        stopped = [f"reached the sweep's highest level ({rules.max_concurrency})"]
    rec = recommendation(max_stable)
    summary = {
        "max_stable_concurrency": max_stable,
        "recommended": list(rec) if rec else None,
        "stopped_because": stopped,
        "rules": asdict(rules),
    }
    emit(sweep_summary(results, summary))
    return results, summary


def sweep_summary(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "{s:{c}^{n}}".format(s=" Concurrency Sweep ", n=78, c="="),
        f"{'users':>6} {'req/s':>8} {'out tok/s':>10} {'tok/s/user':>10} {'TTFT p99':>9} "
        f"{'ITL p99':>8} {'success':>8}  verdict",
    ]
    for level in results:
        m = level["metrics"]
        total = m["completed"] + m["failed"]
        success = m["completed"] / total if total else 0.0
        users = level["users"]
        verdict = level.get("verdict", {})
        lines.append(
            f"{users:>6} {m['request_throughput']:>8.2f} {m['output_throughput']:>10.1f} "
            f"{m['output_throughput'] / max(users, 1):>10.1f} {m['p99_ttft_ms']:>7.0f}ms "
            f"{m['p99_itl_ms']:>6.1f}ms {success:>8.1%}  "
            + ("ok" if verdict.get("passed") else "; ".join(verdict.get("reasons", [])))
        )
    stable = summary["max_stable_concurrency"]
    rec = summary["recommended"]
    lines.append("-" * 78)
    lines.append(f"Maximum stable concurrency: {stable}")
    if rec:
        lines.append(f"Recommended production concurrency: {rec[0]}-{rec[1]} (70-80 % of {stable})")
    else:
        lines.append("No stable level: not even one user was served within the rules.")
    lines.append("Stopped because: " + "; ".join(summary["stopped_because"]))
    lines.append("=" * 78)
    return "\n".join(lines)


def execute(opts: BenchOptions, out: IO[str] | None = None) -> int:
    """Run the benchmark described by ``opts``; write results under ``opts.out``."""
    from inferstack.loadtest.report import write_outputs

    stream = out or sys.stdout
    printed: list[str] = []

    def emit(text: str) -> None:
        printed.append(text)
        print(text, file=stream, flush=True)

    samples = build_samples(opts)
    base = base_url(opts.target)
    headers = request_headers(opts)
    model = opts.model or first_model(base, headers, insecure=opts.insecure)
    bodies = [
        request_body(
            s,
            endpoint=opts.endpoint,
            model=model,
            ignore_eos=opts.ignore_eos,
            extra_body=opts.extra_body,
        )
        for s in samples
    ]
    setup = {
        "base_url": base,
        "path": PATHS[opts.endpoint],
        "headers": headers,
        "bodies": bodies,
        "prompt_lens": [s.prompt_len for s in samples],
        "timeout_s": opts.timeout_s,
        "insecure": opts.insecure,
        "fire_events": opts.fire_events,
    }
    started = datetime.now(UTC)
    sweep: dict[str, Any] | None = None
    with generators(opts) as (ctl, workers):
        if workers:
            print(f"waiting for {workers} load generator worker(s) ...", file=sys.stderr)
        ctl.wait_workers(workers, opts.workers_timeout_s)
        ctl.setup(setup)
        if opts.mode == "sweep":
            results, sweep = run_sweep(ctl, opts, emit)
        else:
            results = []
            for plan in _plans(opts):
                print(f"level {plan.label} ...", file=sys.stderr, flush=True)
                level = analyze(ctl.run_level(plan), opts)
                results.append(level)
                emit(level_block(level, opts))
    doc = {
        "tool": "inferstack bench",
        "version": __version__,
        "metric_definitions": "vllm bench serve (vllm/benchmarks/serve.py)",
        "created": started.isoformat(timespec="seconds"),
        "target": base,
        "model": model,
        "endpoint": opts.endpoint,
        "mode": opts.mode
        if opts.mode == "sweep"
        else ("rate" if opts.request_rate else "concurrency"),
        "options": opts.public(),
        "levels": results,
        "sweep": sweep,
        "printed": "\n".join(printed) + "\n",
    }
    directory = opts.out or Path("bench-results") / started.strftime("%Y%m%dT%H%M%SZ")
    paths = write_outputs(doc, directory, charts=opts.charts)
    print(f"results: {paths['dir']} (report: {paths.get('html', '-')})", file=sys.stderr)
    return 0 if any(level["metrics"]["completed"] for level in results) else 1


def worker(master_host: str, master_port: int) -> int:
    """``inferstack bench worker``: serve users for a master until it quits."""
    from locust.env import Environment

    from inferstack.loadtest.user import StreamUser, install

    logging.getLogger("locust.runners").addFilter(_QuietSpawnWarning())
    env = Environment(user_classes=[StreamUser], catch_exceptions=True)
    runner = env.create_worker_runner(master_host, master_port)
    install(env, runner)
    runner.greenlet.join()
    return 0
