"""Result files of a run: JSON (aggregates and per-request rows), CSV, PNG charts, HTML."""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from inferstack.loadtest.metrics import RequestRecord
from inferstack.loadtest.timeline import level_point, windows

CHARTS = {
    "throughput_vs_latency": "Throughput vs p99 latency",
    "rate_vs_errors": "Request rate vs error rate",
    "concurrency_vs_throughput": "Concurrency vs throughput and per-user efficiency",
    "latency_over_time": "TTFT and ITL over time",
}

LEVEL_COLUMNS = [
    "label",
    "kind",
    "concurrency",
    "request_rate",
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
    "client_cpu_max",
    "client_lag_p99_ms",
    "client_saturated",
    "verdict",
]

REQUEST_COLUMNS = [
    "level",
    "index",
    "start_s",
    "success",
    "status",
    "ttft_ms",
    "tpot_ms",
    "e2el_ms",
    "itl_mean_ms",
    "itl_max_ms",
    "token_events",
    "output_tokens",
    "prompt_tokens",
    "usage",
    "queue_ms",
    "worker",
    "error",
]


def chart_points(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    levels = doc["levels"]
    if len(levels) > 1:
        return [level_point(lv) for lv in levels]
    if not levels:
        return []
    lv = levels[0]
    records = [RequestRecord(**r) for r in lv["requests"]]
    return windows(records, lv["metrics"]["duration"])


def write_charts(doc: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    from inferstack.loadtest import charts

    directory.mkdir(parents=True, exist_ok=True)
    points = chart_points(doc)
    title = f"{doc['model']}"
    if len(doc["levels"]) == 1:
        title += " (windows of one run)"
    paths = {name: directory / f"{name}.png" for name in CHARTS}
    charts.throughput_vs_latency(points, paths["throughput_vs_latency"], title)
    charts.rate_vs_errors(points, paths["rate_vs_errors"], title)
    charts.concurrency_vs_throughput(
        points,
        paths["concurrency_vs_throughput"],
        title,
        log2=doc["mode"] == "sweep",
    )
    charts.latency_over_time(doc["levels"], paths["latency_over_time"], title)
    return paths


def _level_row(lv: Mapping[str, Any]) -> dict[str, Any]:
    m = lv["metrics"]
    row = {k: m.get(k, "") for k in LEVEL_COLUMNS if k in m}
    verdict = lv.get("verdict")
    row.update(
        label=lv["label"],
        kind=lv["kind"],
        concurrency=lv["concurrency"] if lv["concurrency"] is not None else "",
        request_rate=lv["request_rate"] if lv["request_rate"] is not None else "",
        request_goodput="" if m["request_goodput"] is None else m["request_goodput"],
        client_cpu_max=round(lv["client"]["cpu_max"], 4),
        client_lag_p99_ms=round(lv["client"]["lag_p99_ms"], 3),
        client_saturated=lv["client"]["saturated"],
        verdict=(
            ""
            if verdict is None
            else ("ok" if verdict["passed"] else "; ".join(verdict["reasons"]))
        ),
    )
    return row


def _request_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for lv in doc["levels"]:
        for r in lv["requests"]:
            itl = r["itl"]
            out = r["output_tokens"]
            tpot = (r["latency"] - r["ttft"]) / (out - 1) if r["success"] and out > 1 else None
            rows.append(
                {
                    "level": lv["label"],
                    "index": r["index"],
                    "start_s": round(r["start"], 6),
                    "success": r["success"],
                    "status": r["status"],
                    "ttft_ms": round(r["ttft"] * 1000, 3) if r["success"] else "",
                    "tpot_ms": "" if tpot is None else round(tpot * 1000, 3),
                    "e2el_ms": round(r["latency"] * 1000, 3) if r["success"] else "",
                    "itl_mean_ms": round(sum(itl) / len(itl) * 1000, 3) if itl else "",
                    "itl_max_ms": round(max(itl) * 1000, 3) if itl else "",
                    "token_events": len(itl) + 1 if r["success"] else 0,
                    "output_tokens": out,
                    "prompt_tokens": r["prompt_tokens"],
                    "usage": r["usage"],
                    "queue_ms": round(r["queue_time"] * 1000, 3),
                    "worker": r["worker"],
                    "error": r["error"],
                }
            )
    return rows


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(doc: dict[str, Any], directory: Path, charts: bool = True) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"dir": directory}
    paths["json"] = directory / "result.json"
    paths["json"].write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=_nan)
    )
    paths["levels_csv"] = directory / "levels.csv"
    _write_csv(paths["levels_csv"], LEVEL_COLUMNS, [_level_row(lv) for lv in doc["levels"]])
    paths["requests_csv"] = directory / "requests.csv"
    _write_csv(paths["requests_csv"], REQUEST_COLUMNS, _request_rows(doc))
    paths["text"] = directory / "result.txt"
    paths["text"].write_text(doc.get("printed", ""))
    pngs: dict[str, Path] = {}
    if charts and doc["levels"]:
        pngs = write_charts(doc, directory / "charts")
        paths.update({f"chart_{k}": v for k, v in pngs.items()})
    paths["html"] = directory / "report.html"
    paths["html"].write_text(render_html(doc, pngs))
    return paths


def _nan(obj: Any) -> Any:
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.2f}"
    return html.escape(str(v))


def render_html(doc: Mapping[str, Any], pngs: Mapping[str, Path]) -> str:
    """One self-contained page: result blocks, level table, verdict, client figures, charts."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>inferstack bench — {e(str(doc['model']))}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;"
        "padding:.2em .5em;text-align:right}th{background:#eee}"
        ".warn{background:#fff3cd;border:1px solid #e0b400;padding:.6em}"
        "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}</style></head><body>",
        "<h1>inferstack bench</h1>",
        "<p>Target <code>"
        + e(str(doc["target"]))
        + "</code>, model <code>"
        + e(str(doc["model"]))
        + f"</code>, endpoint {e(str(doc['endpoint']))}, mode {e(str(doc['mode']))}, "
        + f"started {e(str(doc['created']))}. Metrics are defined as "
        + "<code>vllm bench serve</code> defines them (see the end of this page).</p>",
    ]
    saturated = [lv["label"] for lv in doc["levels"] if lv["client"]["saturated"]]
    if saturated:
        parts.append(
            "<p class='warn'><b>The load generator saturated</b> in "
            + e(", ".join(saturated))
            + ": its latency figures there are withheld (they would measure the client, not "
            "the server). Run with <code>--processes N</code> or more workers.</p>"
        )
    sweep = doc.get("sweep")
    if sweep:
        stable = sweep["max_stable_concurrency"]
        rec = sweep["recommended"]
        parts.append("<h2>Capacity</h2><p>")
        parts.append(f"Maximum stable concurrency: <b>{stable}</b>. ")
        if rec:
            parts.append(
                f"Recommended production concurrency: <b>{rec[0]}&ndash;{rec[1]}</b> "
                f"(70&ndash;80 % of {stable}). "
            )
        parts.append("Stopped because: " + e("; ".join(sweep["stopped_because"])) + ".</p>")
    parts.append("<h2>Levels</h2><table><tr>")
    cols = [
        ("label", "level"),
        ("completed", "ok"),
        ("failed", "failed"),
        ("request_throughput", "req/s"),
        ("output_throughput", "out tok/s"),
        ("mean_ttft_ms", "TTFT mean"),
        ("p99_ttft_ms", "TTFT p99"),
        ("mean_tpot_ms", "TPOT mean"),
        ("mean_itl_ms", "ITL mean"),
        ("p99_itl_ms", "ITL p99"),
        ("p99_e2el_ms", "E2E p99"),
        ("client_cpu_max", "client CPU"),
        ("verdict", "verdict"),
    ]
    parts += [f"<th>{e(h)}</th>" for _, h in cols] + ["</tr>"]
    latency_cols = {"mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "p99_itl_ms"}
    latency_cols.add("p99_e2el_ms")
    for lv in doc["levels"]:
        row = _level_row(lv)
        cells = []
        for key, _ in cols:
            value = row.get(key, "")
            if key in latency_cols and lv["client"]["saturated"]:
                cells.append("<td>withheld</td>")
            elif key == "client_cpu_max":
                cells.append(f"<td>{value:.0%}</td>")
            else:
                cells.append(f"<td>{_fmt(value)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    for key, title in CHARTS.items():
        if key in pngs:
            data = base64.b64encode(pngs[key].read_bytes()).decode()
            parts.append(
                f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
            )
    parts.append("<h2>Result blocks</h2><pre>" + e(str(doc.get("printed", ""))) + "</pre>")
    parts.append("<h2>Load generator</h2><table><tr><th>level</th><th>process</th><th>users</th>")
    parts.append("<th>CPU (of a core)</th><th>loop lag p99 (ms)</th><th>lag max (ms)</th></tr>")
    for lv in doc["levels"]:
        for node in lv["client"]["nodes"]:
            parts.append(
                f"<tr><td>{e(lv['label'])}</td><td>{e(str(node['node']))}</td>"
                f"<td>{node['users']}</td><td>{node['cpu']:.0%}</td>"
                f"<td>{node['lag_p99_ms']:.2f}</td><td>{node['lag_max_ms']:.2f}</td></tr>"
            )
    parts.append("</table>")
    parts.append(DEFINITIONS_HTML)
    parts.append(
        "<h2>Options</h2><pre>"
        + e(orjson.dumps(doc["options"], option=orjson.OPT_INDENT_2).decode())
        + "</pre></body></html>"
    )
    return "\n".join(parts)


DEFINITIONS_HTML = """
<h2>Metric definitions</h2>
<p>As <code>vllm bench serve</code> defines them (vllm/benchmarks/serve.py and
benchmarks/lib/endpoint_request_func.py); times are taken with a monotonic clock when the bytes
arrive.</p>
<ul>
<li><b>TTFT</b>: request sent → first SSE event whose <code>choices</code> is not empty (its
text may be empty).</li>
<li><b>TPOT</b>: (E2E &minus; TTFT) / (output tokens &minus; 1), for requests with more
than one output token.</li>
<li><b>ITL</b>: every gap between consecutive such events, pooled over all requests.</li>
<li><b>E2E latency</b>: request sent → last such event (the usage-only final event does not
count).</li>
<li><b>Output tokens</b>: the server's <code>usage.completion_tokens</code> (requests ask for
<code>stream_options.include_usage</code>).</li>
<li><b>Throughputs</b>: completed requests, output tokens and input + output tokens divided by
the duration (first send → last request finished); <b>goodput</b>: requests within every given
SLO per second; <b>peak output tokens/s</b>: token events in the busiest 1-s bin;
<b>peak concurrent requests</b>: most overlapping [send, last token) intervals.</li>
<li><b>Failed</b>: not HTTP 200, no event with choices, an error event, or a stream cut before
<code>data: [DONE]</code> (vLLM counts the last two as successes).</li>
<li><b>Client-side queueing</b> (fixed-rate runs): scheduled arrival → send, kept apart from
server latency.</li>
</ul>
<p>Load generator honesty: each generator process measures its CPU time over wall time and how
late its event loop wakes up; at 90 % of a core or a loop lag p99 over the limit, latencies are
withheld.</p>
"""
