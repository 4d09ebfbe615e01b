"""``inferstack monitoring``: build the dashboards, check expressions against a Prometheus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

monitoring_app = typer.Typer(
    help="Monitoring as code: Grafana dashboards, checks of every rule and panel expression.",
    no_args_is_help=True,
)


def _repo_monitoring_dir() -> Path:
    """``monitoring/`` of the source tree this package runs from (editable install)."""
    return Path(__file__).resolve().parents[3] / "monitoring"


MonitoringDir = Annotated[
    Path | None,
    typer.Option(help="The repository's monitoring/ directory (default: next to this package)."),
]


@monitoring_app.command("dashboards")
def dashboards_cmd(
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the JSON (default: monitoring/grafana/dashboards)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only report files that differ; exit 1 if any.")
    ] = False,
) -> None:
    """Write the Grafana dashboards built by inferstack.monitoring.dashboards as JSON."""
    from inferstack.monitoring import dashboards

    directory = out or _repo_monitoring_dir() / "grafana" / "dashboards"
    if check:
        stale = dashboards.stale(directory)
        for name in stale:
            typer.echo(f"out of date: {directory / name}", err=True)
        raise typer.Exit(1 if stale else 0)
    for path in dashboards.write(directory):
        typer.echo(str(path))


@monitoring_app.command("verify")
def verify_cmd(
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL, e.g. http://10.0.0.5:9090")],
    monitoring_dir: MonitoringDir = None,
    interval: Annotated[
        str, typer.Option(help="What $__rate_interval and friends become in dashboard queries.")
    ] = "1m",
    timeout: Annotated[
        float, typer.Option(help="Seconds to keep retrying expressions that have no data yet.")
    ] = 60.0,
) -> None:
    """Check that every loaded rule and every dashboard query returns data from PROMETHEUS.

    Rules come from Prometheus itself (/api/v1/rules: what it really evaluates); dashboards
    from monitoring/grafana/dashboards. GPU expressions and pending metrics are skipped as
    monitoring/verify.yml says. Exit status 1 if any expression has no data or fails.
    """
    from inferstack.monitoring.sources import dashboard_expressions
    from inferstack.monitoring.verify import Policy, Prometheus, check_live, report

    mdir = monitoring_dir or _repo_monitoring_dir()
    prom = Prometheus(prometheus)
    expressions = prom.rules() + dashboard_expressions(
        (mdir / "grafana" / "dashboards").glob("*.json")
    )
    outcomes = check_live(prom, expressions, Policy.load(mdir), interval, timeout)
    typer.echo(report(outcomes))
    failed = [o for o in outcomes if o.status in ("empty", "error")]
    typer.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    raise typer.Exit(1 if failed else 0)


@monitoring_app.command("load")
def load_cmd(
    gateway: Annotated[str, typer.Option(help="Gateway (or edge) base URL.")],
    api_key: Annotated[str, typer.Option(envvar="INFERSTACK_API_KEY", help="A client API key.")],
    model: Annotated[str, typer.Option(help="Served model name.")],
    rounds: Annotated[int, typer.Option(help="Times the request mix is sent.")] = 3,
    burst: Annotated[int, typer.Option(help="Concurrent streams per round.")] = 12,
) -> None:
    """Send a short, bounded mix of requests that touches every monitored series."""
    from inferstack.monitoring.load import run_load

    statuses = run_load(gateway, api_key, model, rounds=rounds, burst=burst)
    typer.echo(json.dumps({str(k): v for k, v in sorted(statuses.items())}))
