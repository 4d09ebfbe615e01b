"""PromQL analysis with a real parser (``promql-parser``): metric names an expression reads,
the "signal" part of an alert expression, Grafana variable substitution."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import promql_parser

COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})


class PromQLError(ValueError):
    """An expression that does not parse."""


def parse(expr: str) -> Any:
    try:
        return promql_parser.parse(expr)
    except Exception as exc:  # the binding raises plain ValueError/RuntimeError variants
        raise PromQLError(f"cannot parse {expr!r}: {exc}") from exc


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, promql_parser.BinaryExpr):
        yield node.lhs
        yield node.rhs
    elif isinstance(node, promql_parser.AggregateExpr):
        if node.param is not None:
            yield node.param
        yield node.expr
    elif isinstance(node, promql_parser.Call):
        yield from node.args
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield node.expr


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in _children(node):
        yield from _walk(child)


def _selector_name(sel: Any) -> str:
    if sel.name:
        return str(sel.name)
    for m in sel.matchers.matchers:
        if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
            return str(m.value)
    raise PromQLError(f"selector {sel} names no metric (a regex on __name__ cannot be checked)")


def metric_names(expr: str) -> set[str]:
    """Every metric name the expression selects (histogram series with their suffixes)."""
    return {
        _selector_name(n) for n in _walk(parse(expr)) if isinstance(n, promql_parser.VectorSelector)
    }


def _is_constant(node: Any) -> bool:
    return not any(isinstance(n, promql_parser.VectorSelector) for n in _walk(node))


def _unparen(node: Any) -> Any:
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def _signal(node: Any) -> list[Any]:
    node = _unparen(node)
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op)
        if op in ("and", "or"):
            return _signal(node.lhs) + _signal(node.rhs)
        if op == "unless":
            return _signal(node.lhs)
        returns_bool = node.modifier is not None and node.modifier.return_bool
        if op in COMPARISONS and not returns_bool:
            if _is_constant(node.rhs):
                return _signal(node.lhs)
            if _is_constant(node.lhs):
                return _signal(node.rhs)
            return _signal(node.lhs) + _signal(node.rhs)
    return [node]


def signal_parts(expr: str) -> list[str]:
    """The parts of an alert expression that must return data whatever the condition.

    A filtering comparison against a constant (``X > 0.05``) is dropped and ``X`` kept; both
    operands of a comparison between two vectors are kept; both sides of ``and``/``or`` and
    the left side of ``unless`` are examined the same way. An alert that should not fire has
    no samples, but its signal has: a signal without data means the alert is blind.
    """
    parts: list[str] = []
    for node in _signal(parse(expr)):
        text = str(node)
        if text not in parts:
            parts.append(text)
    return parts


_GRAFANA_DURATIONS = ("$__rate_interval", "$__interval", "$__range")
_GRAFANA_VAR = re.compile(r"\$\{[A-Za-z]\w*(?::\w+)?\}|\$[A-Za-z]\w*")


def substitute_grafana(expr: str, interval: str = "1m") -> str:
    """A dashboard query made runnable: built-in intervals become ``interval``, template
    variables (used only inside ``=~"..."`` matchers) match everything."""
    for name in _GRAFANA_DURATIONS:
        expr = expr.replace(name, interval)
    return _GRAFANA_VAR.sub(".*", expr)


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.S)


def variable_query_expr(query: str) -> str | None:
    """The PromQL inside a Grafana ``label_values(EXPR, label)`` variable query, if any."""
    m = _LABEL_VALUES.match(query)
    return m.group(1) if m else None
