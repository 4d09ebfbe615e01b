"""The monitoring configuration against a real Prometheus, fed by real components.

Started on loopback, all from the rendered files where there is one: two engine simulators
(one engine host with two instances; both inject errors), the gateway (small admission so a
burst gets 429s), Redis + the redis exporter, nginx with stub_status + the nginx exporter, the
node exporter, Alertmanager and Prometheus (1 s scrape and evaluation). gpu1's engines are
down (no GPU here) and its DCGM port serves a static page of DCGM series, only to check the
gpu_group relabelling. After a short load through the gateway:

- every metric name in every rule and dashboard query is emitted by some component (names
  scraped from their /metrics), recorded by a rule, a Prometheus series, a DCGM counter
  (monitoring/dcgm/counters.csv) or pending (monitoring/verify.yml);
- every rule and dashboard query returns data (alerts through their signal; GPU and pending
  metrics skipped as monitoring/verify.yml says), using the same check as
  `inferstack monitoring verify` against the lab.
"""

from __future__ import annotations

import http.server
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferstack.monitoring.load import run_load
from inferstack.monitoring.names import scrape_names
from inferstack.monitoring.sources import dashboard_expressions, rule_expressions
from inferstack.monitoring.verify import Policy, Prometheus, check_live, report, unknown_names
from tests.monitoring.conftest import DASHBOARDS, MONITORING, Rendered
from tests.procs import SIM_MODEL, TEST_KEY, Processes, processes, wait_http

DCGM_PAGE = "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n" + "".join(
    f'DCGM_FI_DEV_GPU_TEMP{{gpu="{i}",UUID="GPU-{i}",device="nvidia{i}",'
    f'modelName="NVIDIA H100",Hostname="gpu1"}} {40 + i}\n'
    for i in range(4)
)


@dataclass
class Live:
    prometheus: Prometheus
    metrics_urls: list[str]
    statuses: dict[int, int]


def _args(default_file: Path, **replace: str) -> list[str]:
    """The flags in a rendered /etc/default file, with some values replaced (flag=value)."""
    [line] = [ln for ln in default_file.read_text().splitlines() if ln.startswith("ARGS=")]
    args = shlex.split(shlex.split(line[len("ARGS=") :])[0])
    out = []
    for a in args:
        flag = a.split("=", 1)[0]
        out.append(f"{flag}={replace[flag]}" if flag in replace else a)
    return out


def _static_server(port: int, body: str) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _nginx_conf(tmp: Path, port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /stub_status {{ stub_status; }}
  }}
}}
"""
    )
    return conf


@pytest.fixture(scope="module")
def live(rendered: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    p = rendered.ports
    mon1 = rendered.host("mon1")
    dcgm = _static_server(p["dcgm"], DCGM_PAGE)
    with processes(tmp) as ps:
        ps: Processes
        fault = ("--ttft-ms", "30", "--itl-ms", "20", "--error-rate", "0.5")
        sims = [
            ps.sim(*fault, "--seed", "1", port=p["engine"]),
            ps.sim(*fault, "--seed", "2", port=p["engine"] + 1),
        ]
        gateway = ps.gateway(
            sims,
            workers=2,
            port=p["gateway"],
            env={
                "INFERSTACK_BACKEND_MAX_INFLIGHT": "2",
                "INFERSTACK_ADMISSION_WAIT_MS": "50",
                "INFERSTACK_MAX_RETRIES": "1",
                "INFERSTACK_EJECT_AFTER_FAILURES": "1000",
            },
        )

        def start(argv: list[str], name: str, port: int, ready: str) -> str:
            proc = ps._spawn(argv, {}, name, port, f"http://127.0.0.1:{port}")
            wait_http(proc.url + ready, proc=proc.popen, timeout=60)
            return proc.url

        redis_argv = ["redis-server", "--port", str(p["redis"]), "--bind", "127.0.0.1"]
        redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
        ps._spawn(redis_argv, {}, "redis", p["redis"], "")
        nginx = ["nginx", "-p", str(tmp), "-c", str(_nginx_conf(tmp, p["edge_status"]))]
        start([*nginx, "-g", "daemon off;"], "nginx", p["edge_status"], "/stub_status")
        exporters = [
            start(
                ["prometheus-node-exporter", *_args(mon1 / "node_exporter" / "default")],
                "node-exporter",
                p["node"],
                "/metrics",
            ),
            start(
                ["prometheus-redis-exporter", *_args(mon1 / "redis_exporter" / "default")],
                "redis-exporter",
                p["redis_exporter"],
                "/metrics",
            ),
            start(
                ["prometheus-nginx-exporter", *_args(mon1 / "nginx_exporter" / "default")],
                "nginx-exporter",
                p["nginx_exporter"],
                "/metrics",
            ),
        ]
        am_args = _args(mon1 / "alertmanager" / "default", **{"--storage.path": str(tmp / "am")})
        am = start(
            ["prometheus-alertmanager", *am_args], "alertmanager", p["alertmanager"], "/-/ready"
        )
        prom_args = _args(
            mon1 / "prometheus" / "default", **{"--storage.tsdb.path": str(tmp / "tsdb")}
        )
        prom = start(["prometheus", *prom_args], "prometheus", p["prometheus"], "/-/ready")
        statuses = run_load(gateway.url, TEST_KEY, SIM_MODEL, rounds=3, burst=12)
        urls = [s.url + "/metrics" for s in sims] + [gateway.url + "/metrics"]
        urls += [u + "/metrics" for u in [*exporters, am, prom]]
        yield Live(Prometheus(prom), urls, statuses)
    dcgm.shutdown()


def _expressions(rendered: Rendered) -> list:
    return rule_expressions(rendered.rule_files) + dashboard_expressions(DASHBOARDS.glob("*.json"))


def test_load_produced_every_kind_of_answer(live: Live) -> None:
    s = live.statuses
    assert s.get(200, 0) > 0 and s.get(429, 0) > 0, s
    assert any(code >= 500 for code in s), s
    assert s.get(401) == 3 and s.get(404) == 3 and s.get(400) == 3, s
    assert s.get(499) == 3, s  # one stream left behind per round


def test_every_expression_names_emitted_metrics(live: Live, rendered: Rendered) -> None:
    emitted: set[str] = set()
    for url in live.metrics_urls:
        emitted |= scrape_names(url)
    assert "vllm:time_to_first_token_seconds_bucket" in emitted
    assert "inferstack_requests_total" in emitted and "nginx_connections_active" in emitted
    policy = Policy.load(MONITORING)
    assert unknown_names(_expressions(rendered), emitted, policy) == {}
    # The check does catch a name nothing emits.
    from inferstack.monitoring.sources import Expression

    bad = Expression("panel", "test", "rate(vllm:no_such_metric_total[5m])")
    assert unknown_names([bad], emitted, policy) == {"test": {"vllm:no_such_metric_total"}}


def test_prometheus_loaded_the_rendered_rules_and_scrapes_the_stack(
    live: Live, rendered: Rendered
) -> None:
    loaded = {e.name for e in live.prometheus.rules()}
    assert loaded == {e.name for e in rule_expressions(rendered.rule_files)}
    down = live.prometheus.targets_down()
    assert all(t.startswith("engine gpu1:") for t in down), down


def test_dcgm_series_get_their_gpu_group(live: Live) -> None:
    from tests.procs import wait_until

    assert wait_until(lambda: len(live.prometheus.query("DCGM_FI_DEV_GPU_TEMP")) == 4, 20)
    series = live.prometheus.query("DCGM_FI_DEV_GPU_TEMP")
    groups = {s["metric"]["gpu"]: s["metric"].get("gpu_group") for s in series}
    assert groups == {"0": "0", "1": "0", "2": "1", "3": "1"}
    assert all("tp" not in s["metric"] and s["metric"]["host"] == "gpu1" for s in series)


def test_every_rule_and_panel_returns_data(live: Live, rendered: Rendered) -> None:
    outcomes = check_live(
        live.prometheus, _expressions(rendered), Policy.load(MONITORING), "1m", timeout=60
    )
    failed = [o for o in outcomes if o.status in ("empty", "error")]
    assert not failed, report(failed)
    skipped = [o for o in outcomes if o.status == "skipped"]
    assert all("GPU metrics" in o.detail or "not emitted yet" in o.detail for o in skipped)
    assert sum(o.status == "data" for o in outcomes) > 80, report(outcomes)
