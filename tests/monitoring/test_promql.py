"""PromQL analysis used by the monitoring checks."""

from __future__ import annotations

import pytest

from inferstack.monitoring import promql


def test_metric_names_include_histogram_series_and_name_matchers() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))"
        ' / on() group_left() {__name__="up", job="x"} + scalar(node_load1)'
    )
    assert promql.metric_names(expr) == {
        "vllm:time_to_first_token_seconds_bucket",
        "up",
        "node_load1",
    }


@pytest.mark.parametrize(
    ("expr", "signal"),
    [
        ("up == 0", ["up"]),
        ("rate(x_total[5m]) > 0", ["rate(x_total[5m])"]),
        ("0.9 < kv", ["kv"]),
        ("a / b < 0.1 and c == 0", ["a / b", "c"]),
        (
            "x == 79 or count by (h) (t) < on (h) max by (h) (e)",
            ["x", "count by (h) (t)", "max by (h) (e)"],
        ),
        ("a unless b", ["a"]),
        ("a > bool 1", ["a > bool 1"]),
        ("(a > 2)", ["a"]),
    ],
)
def test_signal_parts(expr: str, signal: list[str]) -> None:
    got = [promql.parse(s) for s in promql.signal_parts(expr)]
    assert [str(g) for g in got] == [str(promql.parse(s)) for s in signal]


def test_grafana_substitution() -> None:
    expr = (
        'rate(x{model=~"$model", i=~"${instance}"}[$__rate_interval])'
        ' + label_replace(y, "a", "$1", "b", "(.*)")'
    )
    out = promql.substitute_grafana(expr, "2m")
    assert out == 'rate(x{model=~".*", i=~".*"}[2m]) + label_replace(y, "a", "$1", "b", "(.*)")'
    assert (
        promql.variable_query_expr('label_values(vllm:x{a=~"$m"}, instance)') == 'vllm:x{a=~"$m"}'
    )
    assert promql.variable_query_expr("query_result(up)") is None


def test_unparsable_expression_is_reported() -> None:
    with pytest.raises(promql.PromQLError):
        promql.metric_names("sum(rate(x[5m])")
