"""Request bodies as ``vllm bench serve`` sends them (streaming, usage in the last event)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from inferstack.loadtest.datasets import Sample

Endpoint = Literal["chat", "completions"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def request_body(
    sample: Sample,
    *,
    endpoint: Endpoint,
    model: str,
    ignore_eos: bool = False,
    extra_body: Mapping[str, Any] | None = None,
) -> bytes:
    """Chat: ``messages`` + ``max_completion_tokens``; completions: ``prompt`` + ``max_tokens``;
    both ``stream: true`` with ``stream_options.include_usage`` so output tokens come from the
    server's usage; ``ignore_eos`` only when set; ``extra_body`` merged last."""
    body: dict[str, Any] = {"model": model}
    if endpoint == "chat":
        if sample.messages is not None:
            body["messages"] = list(sample.messages)
        else:
            body["messages"] = [{"role": "user", "content": sample.prompt}]
        body["max_completion_tokens"] = sample.output_len
    else:
        body["prompt"] = sample.prompt
        body["max_tokens"] = sample.output_len
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    if extra_body:
        body.update(extra_body)
    return orjson.dumps(body)


def base_url(target: str) -> str:
    """``http://host:8000/v1/`` -> ``http://host:8000`` (paths are added per endpoint)."""
    url = target.rstrip("/")
    return url.removesuffix("/v1")
