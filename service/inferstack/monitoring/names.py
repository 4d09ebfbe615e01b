"""Metric names the stack's components emit, from their real expositions."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Series Prometheus itself writes for every target and for alert rules.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)


def exposition_names(text: str) -> set[str]:
    """Series names in a Prometheus text exposition, as Prometheus stores them (a histogram
    ``h`` gives ``h_bucket``, ``h_sum``, ``h_count``; a counter ``c`` gives ``c_total``)."""
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def scrape_names(url: str, timeout: float = 10.0) -> set[str]:
    """Series names in what ``url`` (a /metrics endpoint) answers now."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return exposition_names(r.read().decode())


def dcgm_counter_names(path: Path) -> set[str]:
    """Fields of a dcgm-exporter collectors file: dcgm-exporter emits exactly these."""
    out: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.add(line.split(",", 1)[0].strip())
    return out


def union(*sets: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for s in sets:
        out.update(s)
    return out
