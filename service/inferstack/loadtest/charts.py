"""PNG charts of a run (matplotlib, Agg, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

from inferstack.loadtest.metrics import RequestRecord
from inferstack.loadtest.timeline import itl_bins

DPI = 90
SIZE = (6.4, 3.8)


def _figure() -> Figure:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    return fig


def _styles(points: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """Levels are joined in order; time windows of one run are separate points."""
    if points and points[0].get("window"):
        return "o", "s"
    return "o-", "s--"


def _annotate(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    if len(labels) > 16:
        return
    for x, y, text in zip(xs, ys, labels, strict=True):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def throughput_vs_latency(points: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    xs = [p["output_throughput"] for p in points]
    first, second = _styles(points)
    ax.plot(xs, [p["p99_ttft_ms"] for p in points], first, label="TTFT p99")
    ax.plot(xs, [p["p99_e2el_ms"] for p in points], second, label="E2E latency p99")
    _annotate(ax, xs, [p["p99_ttft_ms"] for p in points], [p["label"] for p in points])
    ax.set_xlabel("output token throughput (tok/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"Throughput vs p99 latency — {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def rate_vs_errors(points: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    xs = [p["request_rate"] for p in points]
    ys = [p["error_rate"] * 100 for p in points]
    ax.plot(xs, ys, _styles(points)[0], color="tab:red")
    _annotate(ax, xs, ys, [p["label"] for p in points])
    ax.set_xlabel("request rate sent (req/s)")
    ax.set_ylabel("failed requests (%)")
    ax.set_ylim(bottom=0, top=max(5.0, max(ys, default=0) * 1.15))
    ax.set_title(f"Request rate vs error rate — {title}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path)


def concurrency_vs_throughput(
    points: Sequence[dict[str, Any]], path: Path, title: str, log2: bool
) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    xs = [p["concurrency"] for p in points]
    first, second = _styles(points)
    ax.plot(xs, [p["output_throughput"] for p in points], first, label="output tok/s")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("output token throughput (tok/s)")
    if log2 and all(x > 0 for x in xs):
        ax.set_xscale("log", base=2)
    ax2 = ax.twinx()
    ax2.plot(
        xs, [p["per_user"] for p in points], second, color="tab:orange", label="tok/s per user"
    )
    ax2.set_ylabel("tok/s per user")
    ax2.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], fontsize=8, loc="center right")
    ax.set_title(f"Concurrency vs throughput and per-user efficiency — {title}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path)


def latency_over_time(levels: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """TTFT of every request (by send time) and ITL median/p99 per second, levels in a row."""
    fig = Figure(figsize=(SIZE[0], SIZE[1] * 1.4), dpi=DPI, layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    origin = min((lv["wall_start"] for lv in levels), default=0.0)
    for i, lv in enumerate(levels):
        offset = lv["wall_start"] - origin
        records = [RequestRecord(**r) for r in lv["requests"]]
        ok = [r for r in records if r.success]
        color = f"C{i % 10}"
        ax1.scatter(
            [offset + r.start for r in ok],
            [r.ttft * 1000 for r in ok],
            s=4,
            color=color,
            alpha=0.5,
            label=lv["label"] if len(levels) <= 12 else None,
        )
        bins = itl_bins(ok)
        ax2.plot([offset + b[0] for b in bins], [b[1] for b in bins], "-", color=color)
        ax2.plot([offset + b[0] for b in bins], [b[2] for b in bins], ":", color=color)
        if len(levels) > 1:
            ax1.axvline(offset, color="grey", lw=0.5)
            ax2.axvline(offset, color="grey", lw=0.5)
    ax1.set_ylabel("TTFT (ms)")
    ax1.set_title(f"TTFT and ITL over time — {title}", fontsize=10)
    ax1.grid(alpha=0.3)
    if len(levels) > 1 and len(levels) <= 12:
        ax1.legend(fontsize=7, markerscale=3, ncol=min(len(levels), 6))
    ax2.set_ylabel("ITL (ms): median —, p99 ···")
    ax2.set_xlabel("time since start (s)")
    ax2.grid(alpha=0.3)
    fig.savefig(path)
