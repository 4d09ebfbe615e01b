"""What may be cached, and under which key, decided from the already-validated request.

A request is cacheable only when its answer is determined by the request: one choice
(``n == 1``) and either greedy sampling (``temperature == 0``, or vLLM's ``top_k == 1``) or an
explicit ``seed``. Embeddings are always deterministic. Everything else bypasses the cache.

The key is the SHA-256 of canonical JSON (sorted keys, typed fields normalised by the
protocol models, unknown fields as sent) of everything that determines the output: the
route, and every field of the body except those that only change how the answer is
delivered or labelled (``stream_options.include_usage``, ``user``). Keys live in a
namespace per tenant (the API key's id) unless the shared namespace is configured.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from inferstack.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

CachedRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest

KEY_VERSION = "v1"
"""Bumped when the key derivation or the stored format changes (old entries then miss)."""
PREFIX = "inferstack:cache"

# Fields that change neither the engine's output nor its bytes.
_IGNORED_TOP = frozenset({"user"})


def is_deterministic(req: CachedRequest) -> bool:
    """True when the engine gives the same answer to the same request every time."""
    if isinstance(req, EmbeddingRequest):
        return True
    if req.n != 1:
        return False
    extra = req.model_extra or {}
    best_of = extra.get("best_of")
    if best_of is not None and best_of != 1:
        return False
    if req.seed is not None:
        return True
    return req.temperature == 0 or extra.get("top_k") == 1


def canonical(req: CachedRequest, route: str) -> bytes:
    """Canonical JSON of what determines the output of ``req`` on ``route``."""
    payload: dict[str, Any] = req.model_dump(mode="json", exclude_unset=True)
    for name in _IGNORED_TOP:
        payload.pop(name, None)
    if not isinstance(req, EmbeddingRequest):
        payload["stream"] = req.stream  # absent and false are the same request
    opts = payload.get("stream_options")
    if isinstance(opts, dict):
        # The gateway always asks the engine for usage; whether the client sees the usage
        # chunk is decided at replay, so one entry answers both kinds of client.
        opts = {k: v for k, v in opts.items() if k != "include_usage"}
        if opts:
            payload["stream_options"] = opts
        else:
            del payload["stream_options"]
    return orjson.dumps([route, payload], option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class CacheKey:
    entry: str
    """Where the response is stored."""
    lock: str
    """The single-flight lock of that entry (Redis)."""


def cache_key(
    req: CachedRequest, route: str, key_id: str, namespace: Literal["tenant", "shared"]
) -> CacheKey:
    digest = hashlib.sha256(canonical(req, route)).hexdigest()
    scope = f"t:{key_id}" if namespace == "tenant" else "shared"
    base = f"{PREFIX}:{KEY_VERSION}:{scope}:{digest}"
    return CacheKey(entry=base, lock=base + ":lock")


@dataclass(frozen=True, slots=True)
class ClientControls:
    """``Cache-Control`` request directives the cache honours."""

    lookup: bool = True
    """False with ``no-cache``: answer from the engine (and refresh the entry)."""
    store: bool = True
    """False with ``no-store``: do not keep this answer."""


_DEFAULT_CONTROLS = ClientControls()


def client_controls(header: str | None) -> ClientControls:
    if not header:
        return _DEFAULT_CONTROLS
    directives = {d.strip().split("=", 1)[0].lower() for d in header.split(",")}
    return ClientControls(lookup="no-cache" not in directives, store="no-store" not in directives)
