"""``inferstack`` command line: run the gateway or the engine simulator, manage API keys,
run capacity tests."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from inferstack import __version__
from inferstack.gateway.auth import hash_key, new_key
from inferstack.gateway.settings import CONFIG_ENV, ENV_PREFIX, GatewaySettings
from inferstack.lab.cli import lab_app
from inferstack.monitoring.cli import monitoring_app
from inferstack.settings_source import SettingsFileError, describe_validation_error
from inferstack.sim.cli import sim

app = typer.Typer(
    help="inferstack: an OpenAI-compatible gateway in front of vLLM engines, the engine "
    "simulator used where there is no GPU, and tools to operate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(
    help="Create and hash API keys for the gateway's api_keys setting.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(lab_app, name="lab")
app.add_typer(monitoring_app, name="monitoring")
app.command("sim")(sim)


@app.command("gateway")
def gateway(
    config: Annotated[
        str | None,
        typer.Option(
            help=f"YAML settings file (same as {CONFIG_ENV}). Environment variables "
            f"{ENV_PREFIX}* override it."
        ),
    ] = None,
    bind: Annotated[
        str | None, typer.Option(help="HOST:PORT or unix:/path/to.sock (INFERSTACK_BIND).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Uvicorn worker processes (INFERSTACK_WORKERS).")
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="Engine base URL, e.g. http://127.0.0.1:8000; repeat for several "
            "(INFERSTACK_BACKENDS)."
        ),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Accept requests without an API key (local use only).")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Validate the settings, print them (secrets hidden) and exit."
        ),
    ] = False,
) -> None:
    """Run the OpenAI-compatible gateway: a Gunicorn master with Uvicorn workers.

    Every setting is an INFERSTACK_* environment variable or a key in the --config file;
    the options here are shortcuts. `systemctl reload` (SIGHUP) rotates workers gracefully.
    """
    if config:
        os.environ[CONFIG_ENV] = config
    if bind:
        os.environ[f"{ENV_PREFIX}BIND"] = bind
    if workers:
        os.environ[f"{ENV_PREFIX}WORKERS"] = str(workers)
    if backend:
        os.environ[f"{ENV_PREFIX}BACKENDS"] = json.dumps(backend)
    if no_auth:
        os.environ[f"{ENV_PREFIX}AUTH_ENABLED"] = "false"
    settings = load_gateway_settings()
    if check:
        shown = settings.model_dump(
            mode="json", exclude={"backend_api_key", "cache_redis_password"}
        )
        shown["cache_redis_url"] = re.sub(
            r"//([^@/]*:)[^@/]*@", r"//\1***@", shown["cache_redis_url"]
        )
        typer.echo(json.dumps(shown, indent=2))
        return
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:inferstack.gateway.gunicorn_conf"]
    os.execv(sys.executable, argv)


def load_gateway_settings() -> GatewaySettings:
    """Settings, or exit 2 with one line per bad field."""
    try:
        return GatewaySettings()
    except ValidationError as exc:
        typer.echo(describe_validation_error(exc, ENV_PREFIX), err=True)
    except SettingsFileError as exc:
        typer.echo(str(exc), err=True)
    raise typer.Exit(2)


@keys_app.command("new")
def keys_new(
    key_id: Annotated[str, typer.Option("--id", help="Public id of the key (labels metrics).")],
) -> None:
    """Make a random key: give the key to the client, put the api_keys entry in the config."""
    key = new_key()
    typer.echo(f"key (give to the client, shown once): {key}")
    typer.echo("api_keys entry (for the gateway config):")
    typer.echo(json.dumps({"id": key_id, "sha256": hash_key(key)}))


@keys_app.command("hash")
def keys_hash(
    key: Annotated[
        str | None,
        typer.Argument(
            help="The key; read from standard input when omitted (keeps it out of shell history)."
        ),
    ] = None,
) -> None:
    """Print the SHA-256 digest to store for an existing key."""
    value = key if key is not None else sys.stdin.readline().strip()
    if not value:
        typer.echo("no key given", err=True)
        raise typer.Exit(2)
    typer.echo(hash_key(value))


@app.command("local")
def local(
    engines: Annotated[int, typer.Option(help="Simulated engine instances.")] = 2,
    profile: Annotated[
        str, typer.Option(help="Simulator profile (see `inferstack sim --help`).")
    ] = "qwen3-32b-2xa6000",
    port: Annotated[int, typer.Option(help="Gateway port on 127.0.0.1.")] = 9000,
    workers: Annotated[int, typer.Option(help="Gateway workers.")] = 2,
    self_test: Annotated[
        bool,
        typer.Option(
            "--self-test", help="Send one chat request through the stack, print it, and stop."
        ),
    ] = False,
) -> None:
    """Start simulated engines and the gateway on this machine, print a working curl.

    Stops everything it started on Ctrl-C. No GPU, no root, nothing installed system-wide.
    """
    from inferstack.localstack import run_local

    raise typer.Exit(
        run_local(engines=engines, profile=profile, port=port, workers=workers, self_test=self_test)
    )


@app.command(
    "bench",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bench(ctx: typer.Context) -> None:
    """Capacity tests with Locust: run, sweep, worker, report (`inferstack bench --help`).

    Runs in its own process (`python -m inferstack.loadtest`, gevent-patched), so nothing of
    Locust or gevent is imported here.
    """
    argv = [sys.executable, "-m", "inferstack.loadtest", *ctx.args]
    os.environ.setdefault("INFERSTACK_BENCH_PROG", "inferstack bench")
    sys.stdout.flush()
    os.execv(sys.executable, argv)


@app.command("version")
def version() -> None:
    """Print the inferstack version."""
    typer.echo(__version__)


def main() -> None:
    app()
