"""Dashboards: built from inferstack.monitoring.dashboards (the committed JSON is up to date),
the panels the operators need are there, every query parses and uses the provisioned
datasource. Grafana cannot run here, so this is a structural check of what it loads."""

from __future__ import annotations

import json

import pytest

from inferstack.monitoring import dashboards, promql
from inferstack.monitoring.sources import dashboard_expressions
from tests.monitoring.conftest import DASHBOARDS

REQUIRED = {
    "serving.json": [
        "Requests per second",
        "Answers by status",
        "Error ratio (5xx)",
        "Time to first token (TTFT)",
        "Inter-token latency (ITL)",
        "Tokens per second",
        "Requests in flight",
        "Response cache hit ratio",
        "429 and 503 ratio",
    ],
    "engines.json": [
        "Requests running",
        "Requests waiting",
        "KV cache usage",
        "Preemptions per second",
        "Prompt throughput",
        "Generation throughput",
    ],
    "gpus.json": [
        "GPU utilisation",
        "GPU memory used",
        "Temperature",
        "Power draw",
        "Clocks",
        "XID errors and ECC",
    ],
    "edge.json": [
        "Active connections by state",
        "Connections accepted, handled, dropped",
        "Status codes behind the edge",
    ],
    "hosts.json": ["CPU busy", "Memory available", "Disk space free"],
}


def _board(name: str) -> dict:
    return json.loads((DASHBOARDS / name).read_text())


def _panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_json_is_what_the_code_builds() -> None:
    assert dashboards.stale(DASHBOARDS) == [], (
        "run `inferstack monitoring dashboards` and commit monitoring/grafana/dashboards"
    )


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_dashboard_has_the_required_panels(name: str) -> None:
    board = _board(name)
    titles = [p["title"] for p in _panels(board)]
    assert set(REQUIRED[name]) <= set(titles)
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert board["uid"].startswith("inferstack-") and "inferstack" in board["tags"]
    for panel in _panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "inferstack-prometheus"}
        assert panel["description"], panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        assert panel["gridPos"]["w"] > 0 and panel["gridPos"]["h"] > 0


def test_every_query_parses_and_uses_only_known_variables() -> None:
    expressions = dashboard_expressions(DASHBOARDS.glob("*.json"))
    assert len(expressions) > 50
    for e in expressions:
        promql.parse(e.runnable())
    for name in REQUIRED:
        board = _board(name)
        defined = {v["name"] for v in board.get("templating", {}).get("list", [])}
        text = json.dumps(board["panels"])
        used = {v for v in defined | {"model", "instance", "host"} if f"${v}" in text}
        assert used <= defined, f"{name} uses undefined variables {used - defined}"
