"""Per-request state shared by the accounting middleware, the handlers and the logs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferstack.gateway.auth import ANONYMOUS

# Route labels are a closed set so that arbitrary paths cannot blow up metric cardinality.
ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/health",
        "/ready",
        "/metrics",
    }
)


def route_label(path: str) -> str:
    return path if path in ROUTES else "other"


@dataclass(slots=True)
class RequestContext:
    request_id: str
    route: str
    start: float = field(default_factory=time.perf_counter)
    key_id: str = ANONYMOUS
    model: str = ""
    """Set only once the model is known to the pool (bounded label values)."""
    backend: str = ""
    status: int = 0
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    client_gone: bool = False
    cache: str = ""
    """``X-Cache`` result (HIT, MISS, BYPASS); empty when the cache is off."""
