"""The streaming user under plain ``locust -f loadtest/locustfile.py`` (no inferstack controller).

Users send back to back until Locust stops them; TTFT, TPOT, ITL and E2E land in Locust's own
statistics as request type ``SSE`` (its CSV, HTML report and web UI), so Locust's usual
distributed mode works too. ``inferstack bench`` gives the exact vLLM-style aggregates,
sweeps and reports; this entry is for people who live in Locust's UI.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

from locust.env import Environment
from locust.runners import MasterRunner

from inferstack.loadtest.bodies import PATHS, base_url, request_body
from inferstack.loadtest.datasets import prompt_file_samples, random_samples, sharegpt_samples
from inferstack.loadtest.options import API_KEY_ENV
from inferstack.loadtest.user import install


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser  # Locust's parser (its groups do not take is_secret)
    group.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    group.add_argument("--model", default="", help="default: first model of /v1/models")
    group.add_argument("--dataset", choices=["random", "sharegpt", "prompts"], default="random")
    group.add_argument("--dataset-path", default="")
    group.add_argument("--num-prompts", type=int, default=200)
    group.add_argument("--input-len", type=int, default=1024)
    group.add_argument("--output-len", type=int, default=0, help="0: dataset default")
    group.add_argument("--range-ratio", type=float, default=0.0)
    group.add_argument("--ignore-eos", action="store_true", default=False)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV, ""),
        help=f"Bearer key (default: ${API_KEY_ENV})",
        is_secret=True,
    )


def configure(environment: Environment, **_kw: Any) -> None:
    """Make this process a free-running generator (not on a Locust master)."""
    runner = environment.runner
    if runner is None or isinstance(runner, MasterRunner):
        return
    o = environment.parsed_options
    assert o is not None
    host = environment.host or o.host
    if not host:
        return  # Locust itself reports the missing --host
    base = base_url(host)
    out_len = o.output_len or None
    if o.dataset == "random":
        samples = random_samples(o.num_prompts, o.input_len, out_len or 128, o.range_ratio, o.seed)
    elif o.dataset == "sharegpt":
        samples = sharegpt_samples(Path(o.dataset_path), o.num_prompts, out_len, o.seed)
    else:
        samples = prompt_file_samples(Path(o.dataset_path), o.num_prompts, out_len or 128)
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if o.api_key:
        headers["Authorization"] = f"Bearer {o.api_key}"
    model = o.model
    if not model:
        from inferstack.loadtest.runner import first_model

        model = first_model(base, headers)
    gen = install(environment, runner, node=f"{socket.gethostname()}:{os.getpid()}")
    gen.on_setup(
        {
            "base_url": base,
            "path": PATHS[o.endpoint],
            "headers": headers,
            "bodies": [
                request_body(s, endpoint=o.endpoint, model=model, ignore_eos=o.ignore_eos)
                for s in samples
            ],
            "prompt_lens": [s.prompt_len for s in samples],
            "timeout_s": 600.0,
            "fire_events": True,
        }
    )
    gen.free_run()
