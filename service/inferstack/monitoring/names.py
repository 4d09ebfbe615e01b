"""Metric names the stack's components emit, from their real expositions."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable
from pathlib import Path

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


_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?=[{\s])")


def exposition_names(text: str) -> set[str]:
    """Series names in a Prometheus text exposition exactly as written, which is how
    Prometheus stores them (a histogram ``h`` gives ``h_bucket``, ``h_sum``, ``h_count``).
    Not through prometheus-client's parser: it renames counters that lack ``_total``."""
    names = set()
    for line in text.splitlines():
        m = _NAME.match(line)
        if m:
            names.add(m.group(1))
    return names


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
