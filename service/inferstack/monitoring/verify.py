"""Checks of the monitoring expressions: names that no component emits, and expressions that
return no data from a live Prometheus.

Policy (``monitoring/verify.yml``): GPU metrics (the DCGM exporter's fields, plus recorded
series listed as GPU-only) cannot exist without a GPU, so expressions reading them are left to
the promtool unit tests; *pending* metrics are names a component is about to emit: allowed by
the name check, and skipped by the live check until Prometheus has them.

Live check: a recording rule or a dashboard/variable query must return at least one sample;
an alert is checked through its signal (:func:`inferstack.monitoring.promql.signal_parts`),
because an alert that should not fire returns nothing while its signal must not.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from inferstack.monitoring.names import PROMETHEUS_SERIES, dcgm_counter_names
from inferstack.monitoring.sources import Expression, Kind, recorded_names, underlying_names

Status = Literal["data", "empty", "error", "skipped"]


@dataclass(frozen=True)
class Policy:
    gpu_names: frozenset[str]
    pending: dict[str, str] = field(default_factory=dict)  # name -> why it is pending

    @classmethod
    def load(cls, monitoring_dir: Path) -> Policy:
        doc = yaml.safe_load((monitoring_dir / "verify.yml").read_text()) or {}
        gpu = dcgm_counter_names(monitoring_dir / doc["dcgm_counters"])
        gpu |= set(doc.get("gpu_only") or [])
        pending = {p["name"]: p["reason"] for p in doc.get("pending") or []}
        return cls(frozenset(gpu), pending)


def unknown_names(
    expressions: Iterable[Expression], emitted: set[str], policy: Policy
) -> dict[str, set[str]]:
    """origin -> names it reads that nothing emits (neither a component, Prometheus, a
    recording rule, the DCGM counters file nor the pending list)."""
    expressions = list(expressions)
    known = emitted | PROMETHEUS_SERIES | policy.gpu_names | set(policy.pending)
    known |= set(recorded_names(expressions))
    out: dict[str, set[str]] = {}
    for e in expressions:
        missing = e.names() - known
        if missing:
            out[e.origin] = missing
    return out


@dataclass
class Outcome:
    expression: Expression
    status: Status
    queries: list[str]
    detail: str = ""


class Prometheus:
    """The few calls of Prometheus's HTTP API the checks need."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        data = urllib.parse.urlencode(params).encode() if params is not None else None
        req = urllib.request.Request(self.url + path, data=data)
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query now; the result samples (a scalar counts as one)."""
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        return list(data["result"])

    def names(self) -> set[str]:
        return set(self._get("/api/v1/label/__name__/values"))

    def rules(self) -> list[Expression]:
        """The rules Prometheus has loaded, as expressions."""
        out: list[Expression] = []
        for group in self._get("/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                kind: Kind = "record" if rule["type"] == "recording" else "alert"
                origin = f"{Path(group['file']).name}: {group['name']}: {rule['name']}"
                out.append(Expression(kind, origin, rule["query"], rule["name"]))
        return out

    def targets_down(self) -> list[str]:
        data = self._get("/api/v1/targets")
        return [
            f"{t['labels'].get('job')} {t['labels'].get('instance')}: {t.get('lastError')}"
            for t in data["activeTargets"]
            if t["health"] != "up"
        ]


def _queries(e: Expression, interval: str) -> list[str]:
    from inferstack.monitoring.promql import signal_parts

    return signal_parts(e.expr) if e.kind == "alert" else [e.runnable(interval)]


def _skip_reason(e: Expression, base: set[str], policy: Policy, present: set[str]) -> str:
    gpu = base & policy.gpu_names
    if gpu:
        return f"GPU metrics {sorted(gpu)}: covered by the promtool unit tests"
    pending = {n for n in base if n in policy.pending and n not in present}
    if pending:
        return "; ".join(f"{n} not emitted yet ({policy.pending[n]})" for n in sorted(pending))
    return ""


def check_live(
    prom: Prometheus,
    expressions: Iterable[Expression],
    policy: Policy,
    interval: str = "1m",
    timeout: float = 30.0,
) -> list[Outcome]:
    """Run every expression (see the module doc); expressions without data are tried again
    until ``timeout`` (rules need an evaluation or two after the traffic)."""
    expressions = list(expressions)
    recorded = recorded_names(expressions)
    deadline = time.monotonic() + timeout
    outcomes: dict[int, Outcome] = {}
    while True:
        present = prom.names()
        for i, e in enumerate(expressions):
            if i in outcomes and outcomes[i].status in ("data", "skipped"):
                continue
            queries = _queries(e, interval)
            reason = _skip_reason(e, underlying_names(e.names(), recorded), policy, present)
            if reason:
                outcomes[i] = Outcome(e, "skipped", queries, reason)
                continue
            outcomes[i] = _run(prom, e, queries)
        if all(o.status in ("data", "skipped") for o in outcomes.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return [outcomes[i] for i in range(len(expressions))]


def _run(prom: Prometheus, e: Expression, queries: list[str]) -> Outcome:
    empty = []
    for q in queries:
        try:
            if not prom.query(q):
                empty.append(q)
        except Exception as exc:  # an HTTP 400 names the PromQL error
            detail = exc.read().decode() if hasattr(exc, "read") else str(exc)
            return Outcome(e, "error", queries, f"{q}: {detail}")
    if empty:
        return Outcome(e, "empty", queries, "no data: " + " | ".join(empty))
    return Outcome(e, "data", queries)


def report(outcomes: Iterable[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = {"data": "ok  ", "skipped": "skip", "empty": "FAIL", "error": "FAIL"}[o.status]
        line = f"{mark} {o.expression.kind:8} {o.expression.origin}"
        if o.detail:
            line += f"  -- {o.detail}"
        lines.append(line)
    return "\n".join(lines)
