"""Every PromQL expression of the monitoring configuration: rule files and dashboards."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from inferstack.monitoring import promql

Kind = Literal["record", "alert", "panel", "variable"]


@dataclass(frozen=True)
class Expression:
    """One expression and where it comes from (``origin`` names file and rule or panel)."""

    kind: Kind
    origin: str
    expr: str
    name: str = ""  # recorded metric or alert name

    def names(self) -> set[str]:
        """Metric names the expression reads."""
        return promql.metric_names(self.runnable())

    def runnable(self, interval: str = "1m") -> str:
        """The expression as Prometheus can run it (dashboard variables substituted)."""
        if self.kind in ("panel", "variable"):
            return promql.substitute_grafana(self.expr, interval)
        return self.expr


def rule_expressions(files: Iterable[Path]) -> list[Expression]:
    out: list[Expression] = []
    for path in sorted(files):
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                kind: Kind = "record" if "record" in rule else "alert"
                name = rule[kind]
                origin = f"{path.name}: {group['name']}: {name}"
                out.append(Expression(kind, origin, str(rule["expr"]), name))
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def dashboard_expressions(files: Iterable[Path]) -> list[Expression]:
    out: list[Expression] = []
    for path in sorted(files):
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    origin = f"{path.name}: {panel.get('title')} [{target.get('refId')}]"
                    out.append(Expression("panel", origin, target["expr"]))
        for var in (board.get("templating") or {}).get("list") or []:
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            inner = promql.variable_query_expr(query) if isinstance(query, str) else None
            if inner:
                out.append(Expression("variable", f"{path.name}: ${var['name']}", inner))
    return out


def recorded_names(expressions: Iterable[Expression]) -> dict[str, set[str]]:
    """Recording rule outputs -> the metric names their expressions read."""
    out: dict[str, set[str]] = {}
    for e in expressions:
        if e.kind == "record":
            out.setdefault(e.name, set()).update(e.names())
    return out


def underlying_names(names: set[str], recorded: dict[str, set[str]]) -> set[str]:
    """``names`` with recording rule outputs replaced, transitively, by what they read."""
    out: set[str] = set()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in recorded:
            todo.extend(recorded[name])
        else:
            out.add(name)
    return out
