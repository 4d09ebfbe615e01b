"""The controller: drives a Locust runner (local, or master with workers) one level at a time.

A level is one closed-loop concurrency or one fixed request rate. For each level the controller
tells the generators a new step begins, starts the users, waits until every user holds an open
connection, then sends each generator process its share of the work with a common start time
``t0``; it collects finished requests as they arrive and stops the users when every generator
reported done.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust.runners import MasterRunner, Runner

from inferstack.loadtest.arrivals import arrival_times, interleave, split_weighted
from inferstack.loadtest.metrics import RequestRecord
from inferstack.loadtest.user import (
    MSG_DONE,
    MSG_GO,
    MSG_READY,
    MSG_ROWS,
    MSG_SETUP,
    MSG_STEP,
)

POLL_S = 0.05


class ControlError(RuntimeError):
    """The run cannot go on (workers missing, users never ready, a level overran)."""


@dataclass(slots=True)
class LevelPlan:
    """One level: ``users`` closed-loop users, or a fixed ``rate`` served by ``users`` users."""

    users: int
    requests: int | None = None
    """Requests to send (None: until ``duration_s``)."""
    duration_s: float | None = None
    rate: float = math.inf
    burstiness: float = 1.0
    seed: int = 0
    ramp_s: float = 0.0
    """Closed loop: users start spread evenly over this many seconds."""
    label: str = ""


@dataclass(slots=True)
class LevelRun:
    plan: LevelPlan
    records: list[RequestRecord] = field(default_factory=list)
    duration: float = 0.0
    nodes: list[dict[str, Any]] = field(default_factory=list)
    """Per generator process: users, cpu (cores), lag_p50_ms/lag_p99_ms/lag_max_ms ..."""
    wall_start: float = 0.0


class Controller:
    def __init__(
        self,
        runner: Runner,
        *,
        progress_s: float = 10.0,
        ready_timeout_s: float = 120.0,
        stall_s: float = 1260.0,
        out: Any = None,
    ) -> None:
        self.runner = runner
        self.stall_s = stall_s
        self.last_activity = time.monotonic()
        self.distributed = isinstance(runner, MasterRunner)
        self.progress_s = progress_s
        self.ready_timeout_s = ready_timeout_s
        self.out = out or sys.stderr
        self.step = 0
        self.ready: dict[str, int] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self.records: list[RequestRecord] = []
        runner.register_message(MSG_READY, self._on_ready)
        runner.register_message(MSG_ROWS, self._on_rows)
        runner.register_message(MSG_DONE, self._on_done)

    # --- handlers (worker -> controller) ---------------------------------------------------

    def _on_ready(self, environment: Any, msg: Any, **_kw: Any) -> None:
        if msg.data["step"] == self.step:
            self.ready[msg.node_id] = int(msg.data["ready"])

    def _on_rows(self, environment: Any, msg: Any, **_kw: Any) -> None:
        if msg.data["step"] == self.step:
            self.records.extend(RequestRecord.from_row(r) for r in msg.data["rows"])
            self.last_activity = time.monotonic()

    def _on_done(self, environment: Any, msg: Any, **_kw: Any) -> None:
        if msg.data["step"] == self.step:
            self.done[msg.node_id] = dict(msg.data)

    # --- driving ---------------------------------------------------------------------------

    def wait_workers(self, n: int, timeout_s: float) -> None:
        if not isinstance(self.runner, MasterRunner):
            return
        deadline = time.monotonic() + timeout_s
        while self.runner.worker_count < n:
            if time.monotonic() > deadline:
                raise ControlError(
                    f"{self.runner.worker_count} of {n} load generator workers connected "
                    f"after {timeout_s:.0f} s"
                )
            gevent.sleep(0.1)

    def setup(self, data: dict[str, Any]) -> None:
        self.runner.send_message(MSG_SETUP, data)

    def run_level(self, plan: LevelPlan) -> LevelRun:
        self.step += 1
        self.ready, self.done, self.records = {}, {}, []
        closed = math.isinf(plan.rate)
        self.runner.send_message(MSG_STEP, {"step": self.step, "preconnect": closed})
        spawn_rate = float(max(plan.users, 1))
        self.runner.start(plan.users, spawn_rate=spawn_rate)
        self._wait_ready(plan.users)
        weights = {node: n for node, n in self.ready.items() if n > 0}
        t0 = time.time() + (0.5 if self.distributed else 0.02)
        for node, payload in self._shares(plan, weights).items():
            payload.update(step=self.step, t0=t0, users=weights[node], ramp_s=plan.ramp_s)
            self.runner.send_message(MSG_GO, payload, client_id=node)
        run = LevelRun(plan, wall_start=t0)
        self._wait_done(plan, weights, t0)
        self.runner.stop()
        run.records = sorted(self.records, key=lambda r: r.start)
        run.nodes = [self.done[n] for n in sorted(self.done)]
        run.duration = max((d["finished_at"] for d in run.nodes), default=0.0)
        return run

    def _wait_ready(self, users: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while sum(self.ready.values()) < users:
            if time.monotonic() > deadline:
                raise ControlError(
                    f"only {sum(self.ready.values())} of {users} users were ready after "
                    f"{self.ready_timeout_s:.0f} s"
                )
            gevent.sleep(POLL_S)

    def _shares(self, plan: LevelPlan, weights: dict[str, int]) -> dict[str, dict[str, Any]]:
        nodes = sorted(weights)
        if not math.isinf(plan.rate):
            n = plan.requests if plan.requests is not None else self._rate_count(plan)
            times = arrival_times(n, plan.rate, plan.burstiness, plan.seed)
            per: dict[str, list[list[float]]] = {node: [] for node in nodes}
            for i, node in enumerate(interleave(weights, n)):
                per[node].append([i, times[i]])
            return {node: {"arrivals": per[node]} for node in nodes}
        if plan.requests is None:
            return {
                node: {"first": k, "stride": len(nodes), "count": None, "deadline": plan.duration_s}
                for k, node in enumerate(nodes)
            }
        counts = split_weighted(weights, plan.requests)
        out, first = {}, 0
        for node in nodes:
            out[node] = {"first": first, "stride": 1, "count": counts[node]}
            first += counts[node]
        return out

    @staticmethod
    def _rate_count(plan: LevelPlan) -> int:
        assert plan.duration_s is not None
        return max(1, round(plan.rate * plan.duration_s))

    def _expected(self, plan: LevelPlan) -> int | None:
        if plan.requests is not None:
            return plan.requests
        if not math.isinf(plan.rate):
            return self._rate_count(plan)
        return None

    def _wait_done(self, plan: LevelPlan, weights: dict[str, int], t0: float) -> None:
        expected = self._expected(plan)
        last_report = self.last_activity = time.monotonic()
        while len(self.done) < len(weights):
            gevent.sleep(POLL_S)
            if time.monotonic() - self.last_activity > self.stall_s:
                raise ControlError(
                    f"no request finished for {self.stall_s:.0f} s; giving up on level {plan.label}"
                )
            runner = self.runner
            if isinstance(runner, MasterRunner) and runner.worker_count < len(weights):
                raise ControlError("a load generator worker disconnected during the level")
            now = time.monotonic()
            if self.progress_s and now - last_report >= self.progress_s:
                last_report = now
                self._progress(plan, expected, time.time() - t0)

    def _progress(self, plan: LevelPlan, expected: int | None, elapsed: float) -> None:
        done = len(self.records)
        failed = sum(1 for r in self.records if not r.success)
        total = f"/{expected}" if expected else ""
        eta = ""
        if expected and done:
            eta = f", about {max(0.0, elapsed * (expected / done - 1)):.0f} s left"
        elif plan.duration_s:
            eta = f", {max(0.0, plan.duration_s - elapsed):.0f} s left"
        print(
            f"  [{plan.label}] {done}{total} requests, {failed} failed, "
            f"{done / max(elapsed, 1e-9):.1f} req/s, {elapsed:.0f} s{eta}",
            file=self.out,
            flush=True,
        )
