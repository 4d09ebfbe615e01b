"""Gateway settings: ``INFERSTACK_*`` environment variables over an optional YAML file.

The file is named by ``INFERSTACK_CONFIG``. Lists and nested objects given through the
environment are JSON, e.g. ``INFERSTACK_BACKENDS='["http://127.0.0.1:8001"]'``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from inferstack.settings_source import FileSettingsSource

ENV_PREFIX = "INFERSTACK_"
CONFIG_ENV = "INFERSTACK_CONFIG"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BackendConfig(BaseModel):
    """One engine instance (a vLLM OpenAI server or the simulator)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]
    """Base URL without a path, e.g. ``http://10.0.0.5:8000``."""
    name: str | None = None
    """Label used in metrics and logs; defaults to host:port."""

    @property
    def label(self) -> str:
        return self.name or self.url.split("://", 1)[1]


class ApiKey(BaseModel):
    """An accepted API key, stored only as the SHA-256 hex digest of the key."""

    id: str
    """Short public identifier; labels metrics and logs and keys per-tenant limits."""
    sha256: str

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _KEY_ID.match(v):
            raise ValueError("key id must be 1-64 characters of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("sha256")
    @classmethod
    def _digest_shape(cls, v: str) -> str:
        v = v.strip().lower()
        if not _SHA256_HEX.match(v):
            raise ValueError(
                "must be the 64-hex-digit SHA-256 of the key "
                "(inferstack keys hash KEY), never the key itself"
            )
        return v


class GatewaySettings(BaseSettings):
    """Every knob of the gateway. Defaults suit a single host."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )

    # --- server (read by the Gunicorn config module) ---
    bind: str | list[str] = "127.0.0.1:9000"
    """Gunicorn bind: ``HOST:PORT`` or ``unix:/run/inferstack/gateway.sock``, or a list of
    them (e.g. a unix socket for a co-located edge and TCP for Prometheus and remote edges)."""
    workers: Annotated[int, Field(ge=1, le=256)] = 2
    """Uvicorn worker processes."""
    graceful_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    """How long a worker may finish its streams after SIGTERM/HUP before it is killed."""
    lame_duck_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    """On reload/stop, how long a worker keeps answering (with ``Connection: close``) on its open
    connections after it stopped accepting new ones, so clients move without a reset."""
    keepalive_s: Annotated[float, Field(gt=0)] = 75.0
    """Idle keep-alive for client connections (longer than nginx's upstream keepalive_timeout)."""
    max_requests: Annotated[int, Field(ge=0)] = 100_000
    """Recycle a worker after this many requests (0: never), with jitter below."""
    max_requests_jitter: Annotated[int, Field(ge=0)] = 10_000
    metrics_dir: str | None = None
    """PROMETHEUS_MULTIPROC_DIR for the workers; a private temporary directory when unset."""

    # --- backends and routing ---
    backends: list[BackendConfig] = Field(default_factory=list)
    """Engine instances. Strings are accepted as URLs."""
    model: str | None = None
    """Model name ``/ready`` requires; when unset, any model served by a healthy backend."""
    backend_api_key: str | None = None
    """Bearer token sent to engines started with ``--api-key``."""
    backend_max_inflight: Annotated[int, Field(ge=1)] = 256
    """In-flight requests allowed per backend, counted across all workers (shared memory)."""
    admission_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 250
    """How long a request may wait for a free slot before 429."""
    admission_max_waiters: Annotated[int, Field(ge=0)] = 512
    """Requests allowed to wait at once per worker; more get 429 at once."""
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 1
    """``Retry-After`` on 429/503."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Other backends tried when one fails before anything reached the client."""
    session_affinity: Literal["off", "header", "user", "header_or_user"] = "off"
    """Pin a conversation to one engine (prefix cache reuse): by header, by ``user``, or both."""
    session_header: str = "X-Session-ID"
    connect_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    """Longest silence from an engine: queueing + prefill before the first byte, or a gap
    between two chunks of a stream. Past it the request fails with 504."""
    health_interval_s: Annotated[float, Field(gt=0)] = 2.0
    health_timeout_s: Annotated[float, Field(gt=0)] = 1.0
    eject_after_failures: Annotated[int, Field(ge=1)] = 3
    """Consecutive 5xx answers that eject a backend (connection errors eject at once)."""
    drain_file: str | None = None
    """File of backend names or URLs to drain, one per line, re-read every health interval: a
    drained backend gets no new requests and its in-flight requests finish (rolling restarts)."""
    eject_s: Annotated[float, Field(ge=0)] = 5.0
    """Minimum time an ejected backend stays out before a passing probe re-admits it."""
    load_poll_interval_s: Annotated[float, Field(ge=0, le=60)] = 0.5
    """How often one worker of this gateway reads each engine's running + waiting request
    counts (``/metrics``), so that routing sees other gateways' requests; 0 = never."""

    # --- auth ---
    auth_enabled: bool = True
    """Require ``Authorization: Bearer KEY``. Switch off only for local use."""
    api_keys: list[ApiKey] = Field(default_factory=list)

    # --- input limits ---
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_messages: Annotated[int, Field(ge=1)] = 2048
    max_prompt_chars: Annotated[int, Field(ge=1)] = 1_000_000
    max_tokens_ceiling: Annotated[int, Field(ge=1)] = 32_768
    """Largest ``max_tokens`` / ``max_completion_tokens`` accepted."""

    # --- response cache (gateway/cache/) ---
    cache_backend: Literal["off", "memory", "redis"] = "off"
    """``off``; ``memory`` (one process: needs ``workers: 1``); ``redis`` (shared by every
    worker and gateway host)."""
    cache_redis_url: Annotated[str, Field(pattern=r"^rediss?://[^\s]*$")] = (
        "redis://127.0.0.1:6379/0"
    )
    """``redis://[[USER]:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS)."""
    cache_redis_password: str | None = None
    """Redis password (``requirepass``); wins over one in ``cache_redis_url``."""
    cache_ttl_s: Annotated[int, Field(ge=1)] = 3600
    """How long an entry lives."""
    cache_max_entry_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    """Largest answer stored (body bytes, or all SSE events of a stream)."""
    cache_memory_max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 256 * 1024 * 1024
    """Total size of the memory backend; least recently used entries go first. (Redis's
    own cap is its ``maxmemory`` with ``allkeys-lru``.)"""
    cache_namespace: Literal["tenant", "shared"] = "tenant"
    """``tenant``: entries are per API key id; ``shared``: one entry answers every key."""
    cache_timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 50
    """Limit on each cache operation; past it the request goes on without the cache."""
    cache_retry_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    """After a cache failure, requests skip the cache for this long."""
    cache_lock_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Single-flight: how long identical requests wait for the one upstream call (and the
    TTL of its Redis lock); then they make their own call."""

    # --- logs ---
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    """One JSON line per request (request id, key id, status, duration, backend)."""

    @field_validator("backends", mode="before")
    @classmethod
    def _urls_as_backends(cls, v: object) -> object:
        if isinstance(v, list):
            return [{"url": item.rstrip("/")} if isinstance(item, str) else item for item in v]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if self.auth_enabled and not self.api_keys:
            raise ValueError(
                "api_keys is empty while auth_enabled is true: add keys "
                "(INFERSTACK_API_KEYS) or set INFERSTACK_AUTH_ENABLED=false for local use"
            )
        labels = [b.label for b in self.backends]
        if len(set(labels)) != len(labels):
            raise ValueError("backends: two backends share a name/address")
        if self.cache_backend == "memory" and self.workers > 1:
            raise ValueError(
                f"cache_backend: memory keeps one cache per worker process, and workers is "
                f"{self.workers}: use cache_backend=redis (shared by all workers), or workers=1"
            )
        ids = [k.id for k in self.api_keys]
        if len(set(ids)) != len(ids):
            raise ValueError("api_keys: two keys share an id")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, FileSettingsSource(settings_cls, CONFIG_ENV))
