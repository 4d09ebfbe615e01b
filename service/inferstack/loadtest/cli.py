"""``inferstack bench``: capacity tests with Locust (run, sweep, worker, report).

This module is imported by ``python -m inferstack.loadtest`` after gevent has patched the
standard library; ``inferstack bench`` re-executes into it, so the gateway's process never
imports gevent or Locust.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from inferstack.loadtest.datasets import DatasetError
from inferstack.loadtest.options import API_KEY_ENV, API_KEY_FILE_ENV, BenchOptions

app = typer.Typer(
    help="Capacity tests with Locust: vllm-bench-serve metrics, sweeps, reports, distributed "
    "workers. Results go to --out (JSON, CSV, PNG charts, report.html).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

G_TARGET = "Target"
G_DATA = "Dataset and requests"
G_LOAD = "Load"
G_SWEEP = "Sweep rules"
G_OUT = "Metrics and output"
G_GEN = "Load generator processes"

Target = Annotated[
    str,
    typer.Option(
        envvar="INFERSTACK_BENCH_TARGET",
        help="Base URL of the OpenAI-compatible server (edge, gateway or engine), e.g. "
        "http://127.0.0.1:9000.",
        rich_help_panel=G_TARGET,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar=API_KEY_ENV,
        help=f"Bearer API key (prefer the {API_KEY_ENV} environment variable, or "
        f"{API_KEY_FILE_ENV} naming a file that holds it).",
        show_default=False,
        rich_help_panel=G_TARGET,
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        help="Model name to request; default: the first model of GET /v1/models.",
        rich_help_panel=G_TARGET,
    ),
]
EndpointOpt = Annotated[
    str,
    typer.Option(
        help="chat (/v1/chat/completions) or completions (/v1/completions).",
        rich_help_panel=G_TARGET,
    ),
]
Header = Annotated[
    list[str] | None,
    typer.Option(
        "--header", help="Extra request header KEY=VALUE (repeatable).", rich_help_panel=G_TARGET
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", help="Seconds a request may wait for data.", rich_help_panel=G_TARGET
    ),
]
Insecure = Annotated[
    bool,
    typer.Option("--insecure", help="Do not verify TLS certificates.", rich_help_panel=G_TARGET),
]
Dataset = Annotated[
    str,
    typer.Option(
        help="random, sharegpt (ShareGPT JSON at --dataset-path) or prompts (a file "
        "with one prompt per line, or JSON lines with prompt/messages).",
        rich_help_panel=G_DATA,
    ),
]
DatasetPath = Annotated[
    Path | None,
    typer.Option(help="File for the sharegpt and prompts datasets.", rich_help_panel=G_DATA),
]
NumPrompts = Annotated[
    int,
    typer.Option(
        help="Prompts to prepare; also the requests per level of `run` unless --duration is given.",
        rich_help_panel=G_DATA,
    ),
]
InputLen = Annotated[int, typer.Option(help="random: mean prompt tokens.", rich_help_panel=G_DATA)]
OutputLen = Annotated[
    int | None,
    typer.Option(
        help="max_tokens per request (random and prompts: default 128; sharegpt: "
        "default the recorded answer's length).",
        show_default=False,
        rich_help_panel=G_DATA,
    ),
]
RangeRatio = Annotated[
    float,
    typer.Option(help="random: lengths uniform in [L*(1-r), L*(1+r)].", rich_help_panel=G_DATA),
]
Seed = Annotated[int, typer.Option(help="Seed for datasets and arrivals.", rich_help_panel=G_DATA)]
IgnoreEos = Annotated[
    bool,
    typer.Option(
        "--ignore-eos", help="Send ignore_eos: generate exactly max_tokens.", rich_help_panel=G_DATA
    ),
]
ExtraBody = Annotated[
    str | None,
    typer.Option(help="JSON object merged into every request body.", rich_help_panel=G_DATA),
]
Duration = Annotated[
    float | None,
    typer.Option(
        "--duration",
        help="Seconds per level instead of a request count (users finish their request in flight).",
        rich_help_panel=G_LOAD,
    ),
]
RampUp = Annotated[
    float,
    typer.Option(
        "--ramp-up",
        help="Closed loop: start the users evenly over this many seconds instead of all at once.",
        rich_help_panel=G_LOAD,
    ),
]
Goodput = Annotated[
    list[str] | None,
    typer.Option(
        "--goodput",
        help="SLO KEY:MS for goodput, KEY in ttft, tpot, e2el (repeatable).",
        rich_help_panel=G_OUT,
    ),
]
Percentiles = Annotated[
    str, typer.Option(help="Percentiles to print, comma-separated.", rich_help_panel=G_OUT)
]
PercentileMetrics = Annotated[
    str,
    typer.Option(
        help="Metrics to print: ttft,tpot,itl,e2el,client_queue_time.", rich_help_panel=G_OUT
    ),
]
Out = Annotated[
    Path | None,
    typer.Option(
        help="Directory for the results; default bench-results/<UTC time>.",
        show_default=False,
        rich_help_panel=G_OUT,
    ),
]
NoCharts = Annotated[
    bool, typer.Option("--no-charts", help="Skip the PNG charts.", rich_help_panel=G_OUT)
]
Progress = Annotated[
    float,
    typer.Option(
        "--progress-interval",
        help="Seconds between progress lines (0: none).",
        rich_help_panel=G_OUT,
    ),
]
Processes = Annotated[
    int,
    typer.Option(
        help="Local generator processes (a Locust master and N workers).", rich_help_panel=G_GEN
    ),
]
ExpectWorkers = Annotated[
    int,
    typer.Option(
        help="Be a Locust master and wait for N `inferstack bench worker`s.", rich_help_panel=G_GEN
    ),
]
BindHost = Annotated[
    str,
    typer.Option(help="Master address for workers (with --expect-workers).", rich_help_panel=G_GEN),
]
BindPort = Annotated[
    int,
    typer.Option(help="Master port for workers (with --expect-workers).", rich_help_panel=G_GEN),
]
WorkersTimeout = Annotated[
    float,
    typer.Option(
        "--workers-timeout", help="Seconds to wait for the workers.", rich_help_panel=G_GEN
    ),
]
NoEvents = Annotated[
    bool,
    typer.Option(
        "--no-locust-events",
        help="Do not record TTFT/TPOT/ITL/E2E in Locust's own statistics (saves client CPU).",
        rich_help_panel=G_GEN,
    ),
]
CpuLimit = Annotated[
    float,
    typer.Option(
        help="Generator CPU (fraction of a core) at which latencies are withheld.",
        rich_help_panel=G_GEN,
    ),
]
LagLimit = Annotated[
    float,
    typer.Option(
        "--lag-limit-ms",
        help="Generator event-loop lag p99 at which latencies are withheld.",
        rich_help_panel=G_GEN,
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"inferstack bench: {message}", err=True)
    return typer.Exit(2)


def _headers(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--header: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _extra(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _fail(f"--extra-body: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _fail("--extra-body: must be a JSON object")
    return value


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail(f"--{name}: expected comma-separated numbers, got {text!r}") from None


def _key_from_file() -> str | None:
    path = os.environ.get(API_KEY_FILE_ENV)
    if not path:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise _fail(f"{API_KEY_FILE_ENV}={path}: cannot read the API key: {exc.strerror}") from None
    if not key:
        raise _fail(f"{API_KEY_FILE_ENV}={path}: the file is empty")
    return key


def _execute(fields: dict[str, Any]) -> None:
    from inferstack.loadtest.control import ControlError
    from inferstack.loadtest.runner import BenchError, execute

    fields["api_key"] = fields["api_key"] or _key_from_file()
    fields["headers"] = _headers(fields.pop("header"))
    fields["extra_body"] = _extra(fields.pop("extra_body"))
    fields["percentiles"] = _floats(fields["percentiles"], "percentiles")
    fields["percentile_metrics"] = [
        m.strip() for m in fields["percentile_metrics"].split(",") if m.strip()
    ]
    fields["goodput"] = fields["goodput"] or []
    fields["concurrency"] = fields.get("concurrency") or []
    fields["request_rate"] = fields.get("request_rate") or []
    fields["charts"] = not fields.pop("no_charts")
    fields["fire_events"] = not fields.pop("no_locust_events")
    try:
        opts = BenchOptions(**fields)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"]) or "options"
            typer.echo(f"inferstack bench: invalid {loc}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    try:
        code = execute(opts)
    except (BenchError, DatasetError, ControlError) as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def _shared_options(
    target: Target,
    api_key: ApiKey = None,
    model: Model = None,
    endpoint: EndpointOpt = "chat",
    duration: Duration = None,
    dataset: Dataset = "random",
    dataset_path: DatasetPath = None,
    input_len: InputLen = 1024,
    output_len: OutputLen = None,
    range_ratio: RangeRatio = 0.0,
    seed: Seed = 0,
    ignore_eos: IgnoreEos = False,
    extra_body: ExtraBody = None,
    header: Header = None,
    timeout: Timeout = 600.0,
    insecure: Insecure = False,
    goodput: Goodput = None,
    percentiles: Percentiles = "99",
    percentile_metrics: PercentileMetrics = "ttft,tpot,itl,e2el",
    out: Out = None,
    no_charts: NoCharts = False,
    progress_interval: Progress = 10.0,
    processes: Processes = 1,
    expect_workers: ExpectWorkers = 0,
    master_bind_host: BindHost = "0.0.0.0",
    master_bind_port: BindPort = 5557,
    workers_timeout: WorkersTimeout = 120.0,
    no_locust_events: NoEvents = False,
    cpu_limit: CpuLimit = 0.9,
    lag_limit_ms: LagLimit = 10.0,
) -> None:
    """The options of both ``run`` and ``sweep`` (a signature only, never called)."""


def _with_shared_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` (own options, then ``**shared``) the options of _shared_options: Typer
    reads the combined signature; the shared values arrive in ``shared``."""
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    common = list(inspect.signature(_shared_options, eval_str=True).parameters.values())
    required = [p for p in common if p.default is inspect.Parameter.empty]
    optional = [p for p in common if p.default is not inspect.Parameter.empty]
    command.__signature__ = inspect.Signature([*required, *own, *optional])  # type: ignore[attr-defined]
    return command


@app.command("run")
@_with_shared_options
def run(
    concurrency: Annotated[
        list[int] | None,
        typer.Option(
            "--concurrency",
            "-c",
            help="Closed-loop users (repeat for several "
            "levels). Default 1 unless --request-rate is given.",
            rich_help_panel=G_LOAD,
        ),
    ] = None,
    request_rate: Annotated[
        list[float] | None,
        typer.Option(
            "--request-rate",
            "-r",
            help="Fixed request rate in req/s with "
            "gamma-distributed gaps (repeat for several levels).",
            rich_help_panel=G_LOAD,
        ),
    ] = None,
    burstiness: Annotated[
        float,
        typer.Option(
            help="Gamma shape of the gaps: 1 = Poisson, < 1 burstier, > 1 more even.",
            rich_help_panel=G_LOAD,
        ),
    ] = 1.0,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            help="With --request-rate: at most this many requests in "
            "flight (later arrivals wait; the wait is reported apart).",
            rich_help_panel=G_LOAD,
        ),
    ] = None,
    ramp_up: RampUp = 0.0,
    num_prompts: NumPrompts = 200,
    **shared: Any,
) -> None:
    """Fixed concurrency (closed loop) or fixed request rate, one or more levels.

    Prints vLLM's "Serving Benchmark Result" block per level and writes result.json,
    levels.csv, requests.csv, charts/*.png and report.html to --out.
    """
    fields = {**{k: v for k, v in locals().items() if k != "shared"}, **shared}
    fields["mode"] = "run"
    fields["duration_s"] = fields.pop("duration")
    fields["ramp_up_s"] = fields.pop("ramp_up")
    fields["timeout_s"] = fields.pop("timeout")
    fields["progress_s"] = fields.pop("progress_interval")
    fields["workers_timeout_s"] = fields.pop("workers_timeout")
    _execute(fields)


@app.command("sweep")
@_with_shared_options
def sweep(
    slo_ttft_ms: Annotated[
        float, typer.Option(help="Stop when TTFT p99 exceeds this (ms).", rich_help_panel=G_SWEEP)
    ] = 2000.0,
    min_success: Annotated[
        float,
        typer.Option(
            help="Stop when fewer requests than this fraction succeed.", rich_help_panel=G_SWEEP
        ),
    ] = 0.95,
    min_gain: Annotated[
        float,
        typer.Option(
            help="Stop when doubling the users adds less than this fraction of output throughput.",
            rich_help_panel=G_SWEEP,
        ),
    ] = 0.20,
    max_level: Annotated[
        int, typer.Option(help="Highest concurrency to try.", rich_help_panel=G_SWEEP)
    ] = 1024,
    rounds: Annotated[
        int,
        typer.Option(
            help="Requests per user per level (unless --duration).", rich_help_panel=G_SWEEP
        ),
    ] = 4,
    min_requests: Annotated[
        int,
        typer.Option(
            help="At least this many requests per level (unless --duration).",
            rich_help_panel=G_SWEEP,
        ),
    ] = 32,
    ramp_up: Annotated[
        str,
        typer.Option(
            "--ramp-up",
            help="Seconds over which each level's users start, or auto: the previous level's "
            "median E2E latency (users then do not send in lockstep).",
            rich_help_panel=G_LOAD,
        ),
    ] = "auto",
    num_prompts: NumPrompts = 1000,
    **shared: Any,
) -> None:
    """How many concurrent users does it serve? Concurrency 1, 2, 4, ... until a rule stops.

    Stops when success < --min-success, TTFT p99 > --slo-ttft-ms, output throughput grows less
    than --min-gain, or the load generator saturates; reports the maximum stable concurrency
    and a production recommendation at 70-80 % of it.
    """
    fields = {**{k: v for k, v in locals().items() if k != "shared"}, **shared}
    fields["mode"] = "sweep"
    fields["sweep_max"] = fields.pop("max_level")
    fields["duration_s"] = fields.pop("duration")
    ramp = fields.pop("ramp_up")
    fields["ramp_up_s"] = None if ramp == "auto" else _floats(ramp, "ramp-up")[0]
    fields["timeout_s"] = fields.pop("timeout")
    fields["progress_s"] = fields.pop("progress_interval")
    fields["workers_timeout_s"] = fields.pop("workers_timeout")
    _execute(fields)


@app.command("worker")
def worker(
    master_host: Annotated[str, typer.Option(help="Address of the `inferstack bench` master.")],
    master_port: Annotated[int, typer.Option(help="Its port (--master-bind-port).")] = 5557,
) -> None:
    """Serve as a load generator worker for a master started with --expect-workers."""
    from inferstack.loadtest.runner import worker as run_worker

    raise typer.Exit(run_worker(master_host, master_port))


@app.command("report")
def report(
    directory: Annotated[Path, typer.Argument(help="A results directory (with result.json).")],
) -> None:
    """Write the charts, CSV files and report.html again from result.json."""
    import orjson

    from inferstack.loadtest.report import write_outputs

    try:
        doc = orjson.loads((directory / "result.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise _fail(f"{directory}: {exc}") from None
    paths = write_outputs(doc, directory)
    typer.echo(str(paths["html"]))


def main() -> None:
    app(prog_name=os.environ.get("INFERSTACK_BENCH_PROG", "inferstack bench"))


if __name__ == "__main__":
    main()
