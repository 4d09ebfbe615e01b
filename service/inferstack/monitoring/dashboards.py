# ruff: noqa: E501  (panel descriptions and PromQL read best unbroken)
"""The Grafana dashboards, as code (grafana-foundation-sdk). The one source of
``monitoring/grafana/dashboards/*.json``: ``inferstack monitoring dashboards`` writes them and a
test fails when the committed files differ from what this module builds.

Every panel queries the datasource that ``monitoring/grafana/provisioning/datasources.yml.j2``
provisions under the fixed uid ``inferstack-prometheus``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="inferstack-prometheus")
RATE = "$__rate_interval"
TAGS = ["inferstack"]


@dataclass(frozen=True)
class Q:
    """One query of a panel: PromQL and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class P:
    """One time-series panel."""

    title: str
    description: str
    unit: str
    queries: tuple[Q, ...]
    span: int = 12
    stack: bool = False
    max: float | None = None


@dataclass(frozen=True)
class Board:
    file: str
    uid: str
    title: str
    description: str
    variables: tuple[tuple[str, str, str], ...]  # (name, label, label_values query)
    rows: tuple[tuple[str, tuple[P, ...]], ...]


def _panel(p: P, panel_id: int) -> timeseries.Panel:
    legend = (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )
    tooltip = common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
    panel = (
        timeseries.Panel()
        .id(panel_id)
        .title(p.title)
        .description(p.description)
        .datasource(DATASOURCE)
        .unit(p.unit)
        .span(p.span)
        .height(8)
        .min(0)
        .fill_opacity(10)
        .legend(legend)
        .tooltip(tooltip)
    )
    if p.max is not None:
        panel = panel.max(p.max)
    if p.stack:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for i, q in enumerate(p.queries):
        panel = panel.with_target(
            prometheus.Dataquery()
            .ref_id(chr(ord("A") + i))
            .expr(q.expr)
            .legend_format(q.legend)
            .range()
        )
    return panel


def build(board: Board) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict)."""
    d = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .readonly()
    )
    for name, label, query in board.variables:
        d = d.with_variable(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(f"label_values({query})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    panel_id = 0
    for title, panels in board.rows:
        panel_id += 1
        d = d.with_row(dashboard.Row(title).id(panel_id))
        for p in panels:
            panel_id += 1
            d = d.with_panel(_panel(p, panel_id))
    encoded = JSONEncoder(sort_keys=True).encode(d.build())
    result: dict[str, Any] = json.loads(encoded)
    # The builder gives every variable the same placeholder id; Grafana keys them by name.
    for var in result.get("templating", {}).get("list", []):
        var.pop("id", None)
    return result


def render(board: Board) -> str:
    return json.dumps(build(board), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------
# Serving overview

_M = 'model=~"$model"'
_MN = 'model_name=~"$model"'


def _percentiles(gateway: str, engine: str | None) -> tuple[Q, ...]:
    qs = [
        Q(f"model:inferstack_{gateway}:quantile_rate5m{{{_M}}}", "gateway p{{quantile}} {{model}}")
    ]
    if engine:
        qs.append(
            Q(
                f"model_name:vllm_{engine}:quantile_rate5m{{{_MN}}}",
                "engine p{{quantile}} {{model_name}}",
            )
        )
    return tuple(qs)


SERVING = Board(
    file="serving.json",
    uid="inferstack-serving",
    title="inferstack / Serving overview",
    description="What clients get from the gateways, and what the engines behind them see.",
    variables=(("model", "Model", "inferstack_requests_total, model"),),
    rows=(
        (
            "Traffic",
            (
                P(
                    "Requests per second",
                    "Answers of all gateways per second, by model.",
                    "reqps",
                    (
                        Q(
                            f"sum by (model) (rate(inferstack_requests_total{{{_M}}}[{RATE}]))",
                            "{{model}}",
                        ),
                    ),
                    span=8,
                ),
                P(
                    "Answers by status",
                    "Answers per second by HTTP status (499: the client went away).",
                    "reqps",
                    (
                        Q(
                            f"sum by (status) (rate(inferstack_requests_total{{{_M}}}[{RATE}]))",
                            "{{status}}",
                        ),
                    ),
                    span=8,
                    stack=True,
                ),
                P(
                    "Error ratio (5xx)",
                    "Share of answers that were 5xx over 5 minutes (alert: InferstackHighErrorRatio).",
                    "percentunit",
                    (Q(f"model:inferstack_requests_errors:ratio_rate5m{{{_M}}}", "{{model}}"),),
                    span=8,
                ),
                P(
                    "429 and 503 ratio",
                    "Share of answers refused by admission control: 429 = engines full, 503 = no healthy engine.",
                    "percentunit",
                    (
                        Q(f"model:inferstack_requests_429:ratio_rate5m{{{_M}}}", "429 {{model}}"),
                        Q(f"model:inferstack_requests_503:ratio_rate5m{{{_M}}}", "503 {{model}}"),
                    ),
                ),
                P(
                    "Rejections (429 busy, 503 no backend)",
                    "Requests refused by the gateways' admission control per second, by route and reason.",
                    "reqps",
                    (
                        Q(
                            f"sum by (route, reason) (rate(inferstack_rejections_total[{RATE}]))",
                            "{{reason}} {{route}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Latency",
            (
                P(
                    "Time to first token (TTFT)",
                    "p50/p95/p99 over 5 minutes: gateway side (what clients see) and engine side (arrival in vLLM to first token).",
                    "s",
                    _percentiles("time_to_first_token_seconds", "time_to_first_token_seconds"),
                    span=8,
                ),
                P(
                    "Inter-token latency (ITL)",
                    "p50/p95/p99 of the gaps between streamed tokens, gateway and engine side.",
                    "s",
                    _percentiles("inter_token_latency_seconds", "inter_token_latency_seconds"),
                    span=8,
                ),
                P(
                    "End-to-end latency",
                    "p50/p95/p99 of whole requests: gateway (to the last byte) and engine (arrival to finish).",
                    "s",
                    _percentiles("request_duration_seconds", "e2e_request_latency_seconds"),
                    span=8,
                ),
            ),
        ),
        (
            "Throughput and load",
            (
                P(
                    "Tokens per second",
                    "Generated and prompt tokens per second, from the engines' usage reports as the gateways relay them.",
                    "short",
                    (
                        Q(
                            f"sum by (model) (rate(inferstack_completion_tokens_total{{{_M}}}[{RATE}]))",
                            "generated {{model}}",
                        ),
                        Q(
                            f"sum by (model) (rate(inferstack_prompt_tokens_total{{{_M}}}[{RATE}]))",
                            "prompt {{model}}",
                        ),
                    ),
                ),
                P(
                    "Requests in flight",
                    "Requests being answered by each gateway, and outstanding on each engine (across all workers).",
                    "short",
                    (
                        Q(
                            "sum by (instance) (inferstack_requests_in_flight)",
                            "gateway {{instance}}",
                        ),
                        Q("sum by (backend) (inferstack_backend_in_flight)", "engine {{backend}}"),
                    ),
                ),
            ),
        ),
        (
            "Caches",
            (
                P(
                    "Response cache hit ratio",
                    "Share of cacheable lookups answered from the gateways' Redis cache over 5 minutes.",
                    "percentunit",
                    (Q(":inferstack_cache_hit:ratio_rate5m", "hit ratio"),),
                    span=8,
                    max=1,
                ),
                P(
                    "Response cache lookups",
                    "Cache lookups per second: hit, miss, bypass (not cacheable).",
                    "reqps",
                    (
                        Q(
                            f"sum by (result) (rate(inferstack_cache_requests_total[{RATE}]))",
                            "{{result}}",
                        ),
                    ),
                    span=8,
                    stack=True,
                ),
                P(
                    "Engine prefix cache hit ratio",
                    "Share of prompt tokens vLLM found in its prefix (KV) cache over 5 minutes.",
                    "percentunit",
                    (
                        Q(
                            f"model_name:vllm_prefix_cache_hit:ratio_rate5m{{{_MN}}}",
                            "{{model_name}}",
                        ),
                    ),
                    span=8,
                    max=1,
                ),
            ),
        ),
        (
            "Engines as the gateways see them",
            (
                P(
                    "Engine health (1 = takes traffic)",
                    "Whether any worker of a gateway sends traffic to the engine (0: ejected by every worker).",
                    "short",
                    (
                        Q(
                            "max by (instance, backend) (inferstack_backend_healthy)",
                            "{{backend}} via {{instance}}",
                        ),
                    ),
                    max=1,
                ),
                P(
                    "Upstream errors, retries, client disconnects",
                    "Failed engine calls by kind, requests retried on another engine, and requests whose client went away.",
                    "reqps",
                    (
                        Q(
                            f"sum by (kind) (rate(inferstack_upstream_errors_total[{RATE}]))",
                            "error {{kind}}",
                        ),
                        Q(f"sum(rate(inferstack_retries_total[{RATE}]))", "retries"),
                        Q(
                            f"sum(rate(inferstack_client_disconnects_total[{RATE}]))",
                            "client disconnects",
                        ),
                    ),
                ),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------------------------
# Engines

_E = 'model_name=~"$model", instance=~"$instance"'

ENGINES = Board(
    file="engines.json",
    uid="inferstack-engines",
    title="inferstack / Engines",
    description="vLLM engine instances (one per GPU group): scheduling, KV cache, throughput.",
    variables=(
        ("model", "Model", "vllm:num_requests_running, model_name"),
        ("instance", "Instance", 'vllm:num_requests_running{model_name=~"$model"}, instance'),
    ),
    rows=(
        (
            "Scheduler",
            (
                P(
                    "Requests running",
                    "Sequences in the running batch of each instance.",
                    "short",
                    (Q(f"vllm:num_requests_running{{{_E}}}", "{{instance}}"),),
                    span=8,
                ),
                P(
                    "Requests waiting",
                    "Sequences waiting for a batch slot or KV blocks, preempted ones included (alert: InferstackRequestsWaiting).",
                    "short",
                    (Q(f"vllm:num_requests_waiting{{{_E}}}", "{{instance}}"),),
                    span=8,
                ),
                P(
                    "KV cache usage",
                    "Used share of each instance's KV cache blocks (alert: InferstackKVCacheNearlyFull at 90 %).",
                    "percentunit",
                    (Q(f"vllm:kv_cache_usage_perc{{{_E}}}", "{{instance}}"),),
                    span=8,
                    max=1,
                ),
                P(
                    "Preemptions per second",
                    "Running sequences evicted to free KV blocks (recomputed later; alert: InferstackPreemptionsRising).",
                    "short",
                    (Q(f"rate(vllm:num_preemptions_total{{{_E}}}[{RATE}])", "{{instance}}"),),
                    span=8,
                ),
                P(
                    "Queue time p95",
                    "95th percentile of the time requests waited before their first scheduling.",
                    "s",
                    (
                        Q(
                            f"histogram_quantile(0.95, sum by (instance, le) (rate(vllm:request_queue_time_seconds_bucket{{{_E}}}[{RATE}])))",
                            "{{instance}}",
                        ),
                    ),
                    span=8,
                ),
                P(
                    "TTFT p99 per instance",
                    "99th percentile time to first token inside each engine instance.",
                    "s",
                    (
                        Q(
                            f"histogram_quantile(0.99, sum by (instance, le) (rate(vllm:time_to_first_token_seconds_bucket{{{_E}}}[{RATE}])))",
                            "{{instance}}",
                        ),
                    ),
                    span=8,
                ),
            ),
        ),
        (
            "Throughput",
            (
                P(
                    "Prompt throughput",
                    "Prompt (prefill) tokens processed per second by each instance.",
                    "short",
                    (Q(f"rate(vllm:prompt_tokens_total{{{_E}}}[{RATE}])", "{{instance}}"),),
                    span=8,
                ),
                P(
                    "Generation throughput",
                    "Output tokens generated per second by each instance.",
                    "short",
                    (Q(f"rate(vllm:generation_tokens_total{{{_E}}}[{RATE}])", "{{instance}}"),),
                    span=8,
                ),
                P(
                    "Finished requests by reason",
                    "Sequences finished per second: stop (end of text or stop string), length (max_tokens), abort, error.",
                    "reqps",
                    (
                        Q(
                            f"sum by (finished_reason) (rate(vllm:request_success_total{{{_E}}}[{RATE}]))",
                            "{{finished_reason}}",
                        ),
                    ),
                    span=8,
                    stack=True,
                ),
                P(
                    "Prefix cache hit ratio per instance",
                    "Share of queried prompt tokens found in the prefix cache.",
                    "percentunit",
                    (
                        Q(
                            f"rate(vllm:prefix_cache_hits_total{{{_E}}}[{RATE}]) / rate(vllm:prefix_cache_queries_total{{{_E}}}[{RATE}])",
                            "{{instance}}",
                        ),
                    ),
                    max=1,
                ),
                P(
                    "Engine scrape status",
                    "1 when Prometheus reads the instance's /metrics (alert: InferstackTargetDown).",
                    "short",
                    (Q('up{job="engine", instance=~"$instance"}', "{{instance}}"),),
                    max=1,
                ),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------------------------
# GPUs (DCGM exporter; every field used here is in monitoring/dcgm/counters.csv)

_G = 'host=~"$host"'
_GPU_LEGEND = "{{host}} GPU {{gpu}} (group {{gpu_group}})"

GPUS = Board(
    file="gpus.json",
    uid="inferstack-gpus",
    title="inferstack / GPUs",
    description="NVIDIA GPUs of the engine hosts, from the DCGM exporter.",
    variables=(("host", "Host", "DCGM_FI_DEV_GPU_UTIL, host"),),
    rows=(
        (
            "Load",
            (
                P(
                    "GPU utilisation",
                    "Share of time a kernel was running on each GPU.",
                    "percent",
                    (Q(f"DCGM_FI_DEV_GPU_UTIL{{{_G}}}", _GPU_LEGEND),),
                    span=8,
                    max=100,
                ),
                P(
                    "GPU memory used",
                    "Framebuffer memory in use (vLLM reserves gpu_memory_utilization of it at start).",
                    "percentunit",
                    (
                        Q(
                            f"DCGM_FI_DEV_FB_USED{{{_G}}} / (DCGM_FI_DEV_FB_USED{{{_G}}} + DCGM_FI_DEV_FB_FREE{{{_G}}})",
                            _GPU_LEGEND,
                        ),
                    ),
                    span=8,
                    max=1,
                ),
                P(
                    "Power draw",
                    "Power drawn by each GPU.",
                    "watt",
                    (Q(f"DCGM_FI_DEV_POWER_USAGE{{{_G}}}", _GPU_LEGEND),),
                    span=8,
                ),
            ),
        ),
        (
            "Health",
            (
                P(
                    "Temperature",
                    "GPU temperature (alert: InferstackGPUTemperatureHigh).",
                    "celsius",
                    (Q(f"DCGM_FI_DEV_GPU_TEMP{{{_G}}}", _GPU_LEGEND),),
                    span=8,
                ),
                P(
                    "Clocks",
                    "SM and memory clocks; SM clocks that drop under load mean thermal or power throttling.",
                    "hertz",
                    (
                        Q(f"DCGM_FI_DEV_SM_CLOCK{{{_G}}} * 1e6", "SM " + _GPU_LEGEND),
                        Q(f"DCGM_FI_DEV_MEM_CLOCK{{{_G}}} * 1e6", "memory " + _GPU_LEGEND),
                    ),
                    span=8,
                ),
                P(
                    "XID errors and ECC",
                    "Last XID error code reported per GPU (0: none; 79: fallen off the bus), and double-bit ECC errors.",
                    "short",
                    (
                        Q(f"DCGM_FI_DEV_XID_ERRORS{{{_G}}}", "XID " + _GPU_LEGEND),
                        Q(
                            f"increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{_G}}}[{RATE}])",
                            "ECC DBE " + _GPU_LEGEND,
                        ),
                    ),
                    span=8,
                ),
                P(
                    "GPUs reporting",
                    "GPUs the DCGM exporter reports per host, against the inventory's count (alert: InferstackGPUFallenOffBus).",
                    "short",
                    (
                        Q(f"count by (host) (DCGM_FI_DEV_GPU_TEMP{{{_G}}})", "reporting {{host}}"),
                        Q(f"inferstack:gpus_expected:count{{{_G}}}", "expected {{host}}"),
                    ),
                ),
                P(
                    "GPU memory used (bytes)",
                    "Framebuffer memory in use per GPU.",
                    "bytes",
                    (Q(f"DCGM_FI_DEV_FB_USED{{{_G}}} * 1048576", _GPU_LEGEND),),
                ),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------------------------
# Edge (nginx, through the nginx exporter reading stub_status)

EDGE = Board(
    file="edge.json",
    uid="inferstack-edge",
    title="inferstack / Edge",
    description="The nginx edge: connections and requests from stub_status, status codes of the answers behind it.",
    variables=(),
    rows=(
        (
            "Connections",
            (
                P(
                    "Active connections by state",
                    "Client connections per edge host: reading the request, writing the answer (streams), idle keep-alive.",
                    "short",
                    (
                        Q("sum by (host) (nginx_connections_reading)", "reading {{host}}"),
                        Q("sum by (host) (nginx_connections_writing)", "writing {{host}}"),
                        Q("sum by (host) (nginx_connections_waiting)", "waiting {{host}}"),
                    ),
                    stack=True,
                ),
                P(
                    "Connections accepted, handled, dropped",
                    "New connections per second; accepted but not handled means nginx hit worker_connections.",
                    "short",
                    (
                        Q(
                            f"sum by (host) (rate(nginx_connections_accepted[{RATE}]))",
                            "accepted {{host}}",
                        ),
                        Q(
                            f"sum by (host) (rate(nginx_connections_handled[{RATE}]))",
                            "handled {{host}}",
                        ),
                        Q(
                            f"sum by (host) (rate(nginx_connections_accepted[{RATE}])) - sum by (host) (rate(nginx_connections_handled[{RATE}]))",
                            "dropped {{host}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Requests",
            (
                P(
                    "Requests per second at the edge",
                    "HTTP requests nginx received per second (all of them, including those it answered itself).",
                    "reqps",
                    (Q(f"sum by (host) (rate(nginx_http_requests_total[{RATE}]))", "{{host}}"),),
                ),
                P(
                    "Status codes behind the edge",
                    "Answers of the gateways by status. stub_status has no per-status counts: answers nginx gives itself (limit_req 429s, TLS errors) are in its access log only.",
                    "reqps",
                    (
                        Q(
                            f"sum by (status) (rate(inferstack_requests_total[{RATE}]))",
                            "{{status}}",
                        ),
                    ),
                    stack=True,
                ),
                P(
                    "nginx up",
                    "1 when the exporter reads nginx's stub_status (alert: InferstackNginxDown).",
                    "short",
                    (Q("nginx_up", "{{host}}"),),
                    max=1,
                ),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------------------------
# Hosts (node exporter) and the cache Redis (redis exporter)

_H = 'host=~"$host"'
_FS = 'fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|fuse.*", ' + _H

HOSTS = Board(
    file="hosts.json",
    uid="inferstack-hosts",
    title="inferstack / Hosts and cache",
    description="CPU, memory, disk and network of every host (node exporter), and the cache Redis.",
    variables=(("host", "Host", "node_uname_info, host"),),
    rows=(
        (
            "Hosts",
            (
                P(
                    "CPU busy",
                    "Share of CPU time not idle, per host.",
                    "percentunit",
                    (
                        Q(
                            f'1 - avg by (host) (rate(node_cpu_seconds_total{{mode="idle", {_H}}}[{RATE}]))',
                            "{{host}}",
                        ),
                    ),
                    span=8,
                    max=1,
                ),
                P(
                    "Memory available",
                    "Share of memory available to new processes (alert: InferstackMemoryPressure).",
                    "percentunit",
                    (
                        Q(
                            f"node_memory_MemAvailable_bytes{{{_H}}} / node_memory_MemTotal_bytes{{{_H}}}",
                            "{{host}}",
                        ),
                    ),
                    span=8,
                    max=1,
                ),
                P(
                    "Disk space free",
                    "Free share of each real filesystem (alert: InferstackDiskSpaceLow).",
                    "percentunit",
                    (
                        Q(
                            f"node_filesystem_avail_bytes{{{_FS}}} / node_filesystem_size_bytes{{{_FS}}}",
                            "{{host}} {{mountpoint}}",
                        ),
                    ),
                    span=8,
                    max=1,
                ),
                P(
                    "Network traffic",
                    "Bytes received and sent per second, per host and interface.",
                    "Bps",
                    (
                        Q(
                            f"rate(node_network_receive_bytes_total{{{_H}}}[{RATE}])",
                            "in {{host}} {{device}}",
                        ),
                        Q(
                            f"rate(node_network_transmit_bytes_total{{{_H}}}[{RATE}])",
                            "out {{host}} {{device}}",
                        ),
                    ),
                ),
                P(
                    "Load average (1 min)",
                    "Runnable and uninterruptible tasks, per host.",
                    "short",
                    (Q(f"node_load1{{{_H}}}", "{{host}}"),),
                ),
            ),
        ),
        (
            "Cache Redis",
            (
                P(
                    "Redis memory used",
                    "Memory Redis uses for the response cache.",
                    "bytes",
                    (Q("redis_memory_used_bytes", "{{host}}"),),
                    span=8,
                ),
                P(
                    "Redis commands per second",
                    "Commands Redis processed per second.",
                    "short",
                    (Q(f"rate(redis_commands_processed_total[{RATE}])", "{{host}}"),),
                    span=8,
                ),
                P(
                    "Redis clients and status",
                    "Connected clients (the gateways' pools) and whether the exporter reaches Redis (alert: InferstackRedisDown).",
                    "short",
                    (
                        Q("redis_connected_clients", "clients {{host}}"),
                        Q("redis_up", "up {{host}}"),
                    ),
                    span=8,
                ),
            ),
        ),
    ),
)

BOARDS: tuple[Board, ...] = (SERVING, ENGINES, GPUS, EDGE, HOSTS)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for board in BOARDS:
        path = directory / board.file
        path.write_text(render(board))
        out.append(path)
    return out


def stale(directory: Path) -> list[str]:
    """Dashboard files in ``directory`` that differ from what this module builds (or are
    missing, or are not built by it)."""
    expected = {b.file: render(b) for b in BOARDS}
    problems = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
    problems += [p.name for p in directory.glob("*.json") if p.name not in expected]
    return problems
