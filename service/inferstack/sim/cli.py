"""``inferstack sim``: run the engine simulator as a vLLM-compatible HTTP server."""

from __future__ import annotations

import json
import logging
import sys

import typer

from inferstack.sim.profiles import CostModel, load_profile_data
from inferstack.sim.settings import SettingsError, load_settings

_ENV = "INFERSTACK_SIM_"


def _parse_sets(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"invalid value for --set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _fail(message: str) -> typer.Exit:
    typer.echo(f"inferstack sim: {message}", err=True)
    return typer.Exit(2)


def sim(
    host: str | None = typer.Option(
        None, "--host", show_default="127.0.0.1", help="Address to listen on."
    ),
    port: int | None = typer.Option(None, "--port", show_default="8000", help="TCP port."),
    profile: str | None = typer.Option(
        None,
        "--profile",
        show_default="instant",
        help="Hardware/model profile to simulate (see --list-profiles).",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Served model name clients must send in 'model' (default: the profile's).",
    ),
    describe: bool = typer.Option(
        False,
        "--describe",
        help="Print the profile's derived figures (KV cache size, step times) as JSON and exit.",
    ),
    hf_config: bool = typer.Option(
        False,
        "--hf-config",
        help="Print the profile's model as a Hugging Face config.json and exit.",
    ),
    list_profiles: bool = typer.Option(
        False, "--list-profiles", help="Print the available profiles and exit."
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", show_default="info", help="critical, error, warning, info, debug."
    ),
    access_log: bool | None = typer.Option(
        None, "--access-log/--no-access-log", show_default="off", help="Log every HTTP request."
    ),
    seed: int | None = typer.Option(
        None, "--seed", show_default="0", help="Seed for generated text and injected failures."
    ),
    max_num_seqs: int | None = typer.Option(
        None, "--max-num-seqs", help="Most requests running at once; the rest wait."
    ),
    max_num_batched_tokens: int | None = typer.Option(
        None, "--max-num-batched-tokens", help="Token budget of one engine iteration."
    ),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="Context length: prompt plus output tokens."
    ),
    kv_cache_tokens: int | None = typer.Option(
        None, "--kv-cache-tokens", help="KV cache capacity in tokens (default: from the specs)."
    ),
    ttft_ms: float | None = typer.Option(
        None, "--ttft-ms", help="Fixed time to first token; switches to fixed timing."
    ),
    itl_ms: float | None = typer.Option(
        None, "--itl-ms", help="Fixed time between tokens; switches to fixed timing."
    ),
    sets: list[str] | None = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="Override any profile value, e.g. --set hardware.peak_tflops=800 (repeatable).",
    ),
    error_rate: float | None = typer.Option(
        None, "--error-rate", help="Fraction of generation requests answered with HTTP 500."
    ),
    stall_rate: float | None = typer.Option(
        None, "--stall-rate", help="Fraction of requests that stop producing tokens mid-stream."
    ),
    stall_ms: float | None = typer.Option(
        None, "--stall-ms", show_default="2000", help="How long a stalled request stalls."
    ),
    crash_after: int | None = typer.Option(
        None,
        "--crash-after",
        help="Exit the process hard when generation request N+1 arrives (a GPU falling over).",
    ),
    startup_delay_ms: float | None = typer.Option(
        None, "--startup-delay-ms", help="Answer /health with 503 this long, like a loading model."
    ),
) -> None:
    """Run a simulated vLLM engine: vLLM's OpenAI HTTP API and metrics, no GPU needed.

    Every option can also be set in the environment as INFERSTACK_SIM_<OPTION>
    (e.g. INFERSTACK_SIM_PORT=8001); options on the command line win.
    """
    if list_profiles:
        for name, body in sorted(load_profile_data().items()):
            typer.echo(f"{name:24} {str(body.get('description', '')).strip()}")
        raise typer.Exit(0)
    try:
        settings, resolved = load_settings(
            host=host,
            port=port,
            profile=profile,
            model=model,
            log_level=log_level.lower() if log_level else None,
            access_log=access_log,
            seed=seed,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            kv_cache_tokens=kv_cache_tokens,
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            overrides=_parse_sets(sets),
            error_rate=error_rate,
            stall_rate=stall_rate,
            stall_ms=stall_ms,
            crash_after=crash_after,
            startup_delay_ms=startup_delay_ms,
        )
    except SettingsError as exc:
        raise _fail(str(exc)) from None

    if hf_config:
        if resolved.model is None:
            raise _fail(f"profile {resolved.name!r} has no model section")
        typer.echo(json.dumps(resolved.model.hf_config(), indent=2))
        raise typer.Exit(0)
    cost = CostModel(resolved)
    if describe:
        typer.echo(json.dumps(cost.describe(), indent=2))
        raise typer.Exit(0)

    import uvicorn

    from inferstack.sim.app import create_app

    level = logging.DEBUG if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("inferstack.sim").info(
        "profile %s (%s timing): model %s, max_model_len %d, max_num_seqs %d, KV cache %d tokens",
        resolved.name,
        resolved.mode,
        resolved.served_model_name,
        resolved.engine.max_model_len,
        resolved.engine.max_num_seqs,
        cost.kv_cache_tokens(),
    )
    app = create_app(settings, resolved)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=settings.access_log,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        log_level=settings.log_level,
        backlog=4096,
    )
    uvicorn.Server(config).run()
