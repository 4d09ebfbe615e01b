"""What ``inferstack bench`` is asked to do, validated (pydantic), without Locust."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inferstack.loadtest.metrics import METRIC_HEADERS, parse_goodput

Mode = Literal["run", "sweep"]
DatasetName = Literal["random", "sharegpt", "prompts"]

API_KEY_ENV = "INFERSTACK_BENCH_API_KEY"
# A file holding the key instead: nothing secret on a command line or in an environment that
# sudo logs (what playbooks/loadtest.yml uses).
API_KEY_FILE_ENV = "INFERSTACK_BENCH_API_KEY_FILE"


class BenchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "run"
    target: str
    api_key: str | None = Field(default=None, repr=False)
    model: str | None = None
    endpoint: Literal["chat", "completions"] = "chat"
    # dataset
    dataset: DatasetName = "random"
    dataset_path: Path | None = None
    num_prompts: int = Field(default=200, ge=1)
    input_len: int = Field(default=1024, ge=1)
    output_len: int | None = Field(default=None, ge=1)
    range_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0
    ignore_eos: bool = False
    extra_body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=600.0, gt=0)
    insecure: bool = False
    # load shape (run)
    concurrency: list[int] = Field(default_factory=list)
    request_rate: list[float] = Field(default_factory=list)
    burstiness: float = Field(default=1.0, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    ramp_up_s: float | None = Field(default=0.0, ge=0)
    """Closed loop: start users evenly over this many seconds. None (sweeps): over the previous
    level's median E2E latency, so that users do not send in lockstep."""
    # sweep
    slo_ttft_ms: float | None = Field(default=2000.0, gt=0)
    min_success: float = Field(default=0.95, gt=0, le=1)
    min_gain: float = Field(default=0.20, ge=0)
    sweep_max: int = Field(default=1024, ge=1)
    rounds: int = Field(default=4, ge=1)
    min_requests: int = Field(default=32, ge=1)
    # metrics and output
    goodput: dict[str, float] = Field(default_factory=dict)
    percentiles: list[float] = Field(default_factory=lambda: [99.0])
    percentile_metrics: list[str] = Field(default_factory=lambda: ["ttft", "tpot", "itl", "e2el"])
    out: Path | None = None
    """Results directory; None: bench-results/<UTC time>."""
    charts: bool = True
    progress_s: float = Field(default=10.0, ge=0)
    # generator processes
    processes: int = Field(default=1, ge=1, le=256)
    expect_workers: int = Field(default=0, ge=0)
    master_bind_host: str = "0.0.0.0"
    master_bind_port: int = Field(default=5557, ge=1, le=65535)
    workers_timeout_s: float = Field(default=120.0, gt=0)
    fire_events: bool = True
    cpu_limit: float = Field(default=0.9, gt=0, le=1)
    lag_limit_ms: float = Field(default=10.0, gt=0)

    @field_validator("target")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// base URL, e.g. http://127.0.0.1:9000")
        return v

    @field_validator("goodput", mode="before")
    @classmethod
    def _goodput(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return parse_goodput(v)
        return v

    @field_validator("percentiles")
    @classmethod
    def _pcts(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < p < 100 for p in v):
            raise ValueError("percentiles must be between 0 and 100 (exclusive)")
        return v

    @field_validator("percentile_metrics")
    @classmethod
    def _pmetrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METRIC_HEADERS]
        if bad:
            raise ValueError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRIC_HEADERS)}")
        return v

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("concurrency must be at least 1")
        return v

    @field_validator("request_rate")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not r > 0 or math.isinf(r) for r in v):
            raise ValueError("request rate must be a positive finite number (req/s)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> BenchOptions:
        if self.mode == "run" and self.concurrency and self.request_rate:
            raise ValueError("give either concurrency levels or request rates, not both")
        if self.dataset in ("sharegpt", "prompts") and self.dataset_path is None:
            raise ValueError(f"dataset_path: the {self.dataset} dataset needs a file")
        if self.processes > 1 and self.expect_workers:
            raise ValueError("processes: use local processes or remote workers, not both")
        return self

    @property
    def effective_output_len(self) -> int:
        return self.output_len or 128

    def levels_closed(self) -> list[int]:
        """Closed-loop levels of `run`: --concurrency, else vLLM's spelling of the same
        (--max-concurrency without a request rate), else one user."""
        if self.concurrency:
            return list(self.concurrency)
        if self.request_rate:
            return []
        return [self.max_concurrency or 1]

    def public(self) -> dict[str, Any]:
        """The options for the report: the API key left out, headers' values hidden."""
        data = self.model_dump(mode="json", exclude={"api_key"})
        data["headers"] = dict.fromkeys(self.headers, "***")
        data["api_key"] = "***" if self.api_key else None
        return data
