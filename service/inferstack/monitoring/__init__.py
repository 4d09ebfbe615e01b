"""Monitoring as code: PromQL analysis, the expressions of rules and dashboards, the metric
names the stack emits, the check of every expression against a live Prometheus, and the
Grafana dashboards (generated from ``dashboards.py``)."""
