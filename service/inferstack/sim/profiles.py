"""Simulator profiles: hardware and model specs, and the roofline derived from them.

A profile names a served model, the GPUs it runs on and the engine limits
(``max_num_seqs``, ``max_num_batched_tokens``, ``max_model_len``, KV cache).
:class:`CostModel` turns those specs into the duration of one engine iteration,
which is all the scheduler in :mod:`inferstack.sim.engine` needs.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GIB = 1024**3
MIB = 1024**2


class ProfileError(ValueError):
    """A profile cannot be loaded or describes an engine that could not start."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Spec):
    """Architecture numbers from the model's ``config.json``."""

    name: str
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    params_b: float = Field(gt=0, description="parameters, billions")
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    weight_dtype_bytes: float = Field(2, gt=0)
    kv_dtype_bytes: float = Field(2, gt=0)

    def hf_config(self) -> dict[str, object]:
        """The architecture part of a Hugging Face ``config.json`` (what deployment preflight
        checks read, e.g. ``num_attention_heads`` against the tensor-parallel size)."""
        return {
            "_name_or_path": self.name,
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": "bfloat16" if self.weight_dtype_bytes == 2 else "float8",
        }


class HardwareSpec(_Spec):
    """Per-GPU spec-sheet numbers plus the efficiency assumptions."""

    gpu: str
    gpu_memory_mib: float = Field(gt=0)
    hbm_gbps: float = Field(gt=0)
    peak_tflops: float = Field(gt=0)
    interconnect: str = "none"
    interconnect_gbps: float = Field(32.0, gt=0)
    interconnect_efficiency: float = Field(0.7, gt=0, le=1)
    allreduce_latency_us: float = Field(10.0, ge=0)
    mem_efficiency: float = Field(0.8, gt=0, le=1)
    compute_efficiency: float = Field(0.6, gt=0, le=1)
    step_overhead_ms: float = Field(1.0, ge=0)
    activation_reserve_gib: float = Field(2.0, ge=0)


class EngineSpec(_Spec):
    """vLLM engine arguments the simulator honours."""

    max_model_len: int = Field(8192, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    max_num_batched_tokens: int = Field(8192, gt=0)
    block_size: int = Field(16, gt=0)
    tensor_parallel_size: int = Field(1, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_tokens: int | None = Field(
        None, gt=0, description="KV cache capacity; computed from the specs when unset"
    )
    enable_prefix_caching: bool = True
    time_scale: float = Field(
        1.0, gt=0, description="multiplies every roofline step time (0.1 = ten times faster)"
    )


class FixedSpec(_Spec):
    """Timing of the ``fixed`` mode: no batching model."""

    ttft_ms: float = Field(0.0, ge=0)
    itl_ms: float = Field(0.0, ge=0)


class Profile(_Spec):
    """A complete, validated simulator profile."""

    name: str
    description: str = ""
    mode: Literal["fixed", "roofline"]
    served_model_name: str = Field(min_length=1)
    model: ModelSpec | None = None
    hardware: HardwareSpec | None = None
    engine: EngineSpec = EngineSpec()
    fixed: FixedSpec = FixedSpec()
    embedding_dim: int = Field(1024, gt=0, le=65536)
    vllm_version: str = "0.11.0"

    @model_validator(mode="after")
    def _check(self) -> Profile:
        if self.mode == "roofline" and (self.model is None or self.hardware is None):
            raise ValueError("mode 'roofline' needs both a 'model' and a 'hardware' section")
        tp = self.engine.tensor_parallel_size
        if self.model is not None and self.model.num_attention_heads % tp:
            raise ValueError(
                f"num_attention_heads ({self.model.num_attention_heads}) must be divisible "
                f"by tensor_parallel_size ({tp})"
            )
        if self.model is None and self.engine.kv_cache_tokens is None:
            raise ValueError("engine.kv_cache_tokens is required when the profile has no model")
        return self

    @property
    def root(self) -> str:
        """The model path vLLM reports as ``root`` in ``/v1/models``."""
        return self.model.name if self.model is not None else self.served_model_name


# ---------------------------------------------------------------------------
# Loading and overrides
# ---------------------------------------------------------------------------


def _builtin_profiles_text() -> str:
    return resources.files("inferstack.sim").joinpath("profiles.yaml").read_text("utf-8")


def load_profile_data(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Raw profile mappings by name, from ``path`` or the packaged ``profiles.yaml``."""
    try:
        text = path.read_text("utf-8") if path is not None else _builtin_profiles_text()
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profiles file {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ProfileError("a profiles file must hold a mapping under the key 'profiles'")
    profiles: dict[str, dict[str, Any]] = {}
    for name, body in data["profiles"].items():
        if not isinstance(body, dict):
            raise ProfileError(f"profile {name!r} must be a mapping")
        profiles[str(name)] = body
    return profiles


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for field_name, info in model.model_fields.items():
        annotation = info.annotation
        nested = [
            arg
            for arg in (getattr(annotation, "__args__", None) or (annotation,))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        if nested:
            paths.extend(_leaf_paths(nested[0], f"{prefix}{field_name}."))
        else:
            paths.append(f"{prefix}{field_name}")
    return paths


KNOBS: tuple[str, ...] = tuple(p for p in _leaf_paths(Profile) if p != "name")
"""Every overridable key, dotted (``engine.max_num_seqs``)."""


def resolve_knob(key: str) -> str:
    """Map a dotted key, or a unique leaf name (``peak_tflops``), to its dotted path."""
    if key in KNOBS:
        return key
    matches = [k for k in KNOBS if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ProfileError(f"ambiguous profile key {key!r}: one of {', '.join(matches)}")
    raise ProfileError(f"unknown profile key {key!r} (known: {', '.join(KNOBS)})")


def parse_override_value(raw: str) -> Any:
    """Parse ``--set`` values the way YAML would (numbers, booleans, null, strings)."""
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def apply_overrides(body: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a raw profile with dotted-key overrides applied."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in body.items()}
    for key, value in overrides.items():
        path = resolve_knob(key).split(".")
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def build_profile(
    name: str,
    overrides: dict[str, Any] | None = None,
    path: Path | None = None,
) -> Profile:
    """Load profile ``name``, apply ``overrides`` and validate the result."""
    profiles = load_profile_data(path)
    if name not in profiles:
        raise ProfileError(f"unknown profile {name!r} (available: {', '.join(sorted(profiles))})")
    body = apply_overrides(profiles[name], overrides or {})
    body["name"] = name
    try:
        profile = Profile.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "profile"
        raise ProfileError(f"profile {name!r}: {loc}: {err['msg']}") from None
    # Capacity checks happen here so that a bad profile stops start-up.
    CostModel(profile).check()
    return profile


# ---------------------------------------------------------------------------
# Roofline
# ---------------------------------------------------------------------------


class CostModel:
    """Per-iteration time of a tensor-parallel decoder on the profile's GPUs.

    One engine step processes ``T`` new tokens (decodes and prefill chunks
    together). Per GPU::

        memory  = (weights / TP + KV read / TP + KV written / TP) / (HBM bw x mem_eff)
        compute = (2 x params x T + attention FLOPs) / TP / (peak x compute_eff)
        comm    = 2 all-reduces per layer x (ring bytes / (link bw x link_eff) + latency)
        step    = max(memory, compute) + comm + fixed overhead

    Attention FLOPs are ``4 x layers x heads x head_dim`` per (query, key) pair
    (QK^T and PV, a multiply-add each), summed over the causal context of every
    new token.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.engine = profile.engine
        self.model = profile.model
        self.hw = profile.hardware
        self.tp = profile.engine.tensor_parallel_size
        self.time_scale = profile.engine.time_scale
        model = self.model
        if model is not None:
            self.weight_bytes = model.params_b * 1e9 * model.weight_dtype_bytes
            self.kv_bytes_per_token = (
                2 * model.num_layers * model.num_kv_heads * model.head_dim * model.kv_dtype_bytes
            )
            self.attn_flops_per_pair = (
                4.0 * model.num_layers * model.num_attention_heads * model.head_dim
            )
            self.linear_flops_per_token = 2.0 * model.params_b * 1e9
        else:
            self.weight_bytes = 0.0
            self.kv_bytes_per_token = 0
            self.attn_flops_per_pair = 0.0
            self.linear_flops_per_token = 0.0

    # -- capacity -----------------------------------------------------------

    def kv_budget_bytes(self) -> float | None:
        """Memory left for the KV cache over all GPUs, or None without specs."""
        if self.hw is None or self.model is None:
            return None
        total = self.hw.gpu_memory_mib * MIB * self.engine.gpu_memory_utilization * self.tp
        reserve = self.hw.activation_reserve_gib * GIB * self.tp
        return total - self.weight_bytes - reserve

    def kv_cache_tokens(self) -> int:
        """KV cache capacity in tokens, a whole number of blocks."""
        block = self.engine.block_size
        if self.engine.kv_cache_tokens is not None:
            return max(block, self.engine.kv_cache_tokens // block * block)
        budget = self.kv_budget_bytes()
        if budget is None:  # pragma: no cover - rejected by Profile validation
            raise ProfileError("engine.kv_cache_tokens is required without model/hardware")
        if budget <= 0:
            return 0
        return int(budget // self.kv_bytes_per_token) // block * block

    def num_blocks(self) -> int:
        return self.kv_cache_tokens() // self.engine.block_size

    def check(self) -> None:
        """Raise :class:`ProfileError` when an engine with this profile could not start."""
        kv_tokens = self.kv_cache_tokens()
        name = self.profile.name
        if kv_tokens <= 0:
            budget = self.kv_budget_bytes() or 0.0
            raise ProfileError(
                f"profile {name!r}: no memory left for the KV cache "
                f"({budget / GIB:.2f} GiB after weights and activations); "
                "raise gpu_memory_utilization or tensor_parallel_size, or use more memory"
            )
        max_len = self.engine.max_model_len
        if self.model is not None and max_len > self.model.max_position_embeddings:
            raise ProfileError(
                f"profile {name!r}: max_model_len {max_len} exceeds the model's "
                f"max_position_embeddings {self.model.max_position_embeddings}"
            )
        if max_len > kv_tokens:
            raise ProfileError(
                f"profile {name!r}: max_model_len {max_len} needs more KV cache than the "
                f"{kv_tokens} tokens available; lower max_model_len or add memory"
            )

    # -- timing -------------------------------------------------------------

    def step_parts(
        self, num_tokens: int, kv_read_tokens: float, attn_pairs: float
    ) -> dict[str, float]:
        """Seconds of each roofline term for one iteration (before ``time_scale``)."""
        hw = self.hw
        model = self.model
        if hw is None or model is None or num_tokens <= 0:
            return {"memory": 0.0, "compute": 0.0, "comm": 0.0, "overhead": 0.0}
        tp = self.tp
        mem_bytes = (
            self.weight_bytes + (kv_read_tokens + num_tokens) * self.kv_bytes_per_token
        ) / tp
        memory = mem_bytes / (hw.hbm_gbps * 1e9 * hw.mem_efficiency)
        flops = (
            self.linear_flops_per_token * num_tokens + self.attn_flops_per_pair * attn_pairs
        ) / tp
        compute = flops / (hw.peak_tflops * 1e12 * hw.compute_efficiency)
        comm = 0.0
        if tp > 1:
            ring = 2.0 * (tp - 1) / tp
            msg = model.hidden_size * model.weight_dtype_bytes * num_tokens
            per = ring * msg / (hw.interconnect_gbps * 1e9 * hw.interconnect_efficiency)
            comm = 2 * model.num_layers * (per + hw.allreduce_latency_us * 1e-6)
        return {
            "memory": memory,
            "compute": compute,
            "comm": comm,
            "overhead": hw.step_overhead_ms * 1e-3,
        }

    def step_seconds(self, num_tokens: int, kv_read_tokens: float, attn_pairs: float) -> float:
        """Wall time of one iteration, ``time_scale`` applied."""
        p = self.step_parts(num_tokens, kv_read_tokens, attn_pairs)
        return (max(p["memory"], p["compute"]) + p["comm"] + p["overhead"]) * self.time_scale

    def decode_step_seconds(self, batch: int, context: int) -> float:
        """One decode iteration for ``batch`` sequences that each hold ``context`` tokens."""
        return self.step_seconds(batch, batch * context, batch * (context + 1))

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """Prefill of one prompt alone, in chunks of ``max_num_batched_tokens``."""
        budget = self.engine.max_num_batched_tokens
        done = 0
        total = 0.0
        while done < prompt_tokens:
            n = min(budget, prompt_tokens - done)
            total += self.step_seconds(n, done, n * done + n * (n + 1) / 2)
            done += n
        return total

    # -- reporting ----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Derived figures for operators (``--describe``)."""
        p = self.profile
        e = p.engine
        kv_tokens = self.kv_cache_tokens()
        out: dict[str, Any] = {
            "profile": p.name,
            "description": p.description,
            "mode": p.mode,
            "served_model_name": p.served_model_name,
            "engine": e.model_dump(),
            "kv_cache": {
                "tokens": kv_tokens,
                "blocks": kv_tokens // e.block_size,
                "block_size": e.block_size,
                "max_concurrency_at_max_model_len": round(kv_tokens / e.max_model_len, 2),
            },
        }
        if p.mode == "fixed":
            out["fixed"] = p.fixed.model_dump()
        if self.model is None or self.hw is None:
            return out
        budget = self.kv_budget_bytes() or 0.0
        out["kv_cache"].update(
            {
                "bytes_per_token": self.kv_bytes_per_token,
                "memory_gib": round(budget / GIB, 2),
            }
        )
        out["weights_gib"] = round(self.weight_bytes / GIB, 2)
        out["model"] = self.model.model_dump()
        out["hardware"] = self.hw.model_dump()

        def step(parts: dict[str, float], seconds: float) -> dict[str, Any]:
            bound = "memory" if parts["memory"] >= parts["compute"] else "compute"
            return {
                "ms": round(seconds * 1e3, 3),
                "bound": bound,
                "terms_ms": {k: round(v * 1e3, 3) for k, v in parts.items()},
            }

        ctx = 1024
        decode: dict[str, Any] = {}
        for batch in (1, 8, 64, 256):
            if batch > e.max_num_seqs:
                continue
            parts = self.step_parts(batch, batch * ctx, batch * (ctx + 1))
            seconds = self.decode_step_seconds(batch, ctx)
            entry = step(parts, seconds)
            entry["tokens_per_s"] = round(batch / seconds, 1)
            entry["fits_kv_cache"] = batch * (ctx + 1) <= kv_tokens
            decode[f"batch_{batch}"] = entry
        out["decode_step_context_tokens"] = ctx
        out["decode_step"] = decode
        prompt = 1000
        pre_parts = self.step_parts(
            min(prompt, e.max_num_batched_tokens), 0, prompt * (prompt + 1) / 2
        )
        out["prefill_1000_tokens"] = step(pre_parts, self.prefill_seconds(prompt))
        out["prefill_1000_tokens"]["chunks"] = math.ceil(prompt / e.max_num_batched_tokens)
        return out
