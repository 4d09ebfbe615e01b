"""Start-up settings of the engine simulator (environment prefix ``INFERSTACK_SIM_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferstack.sim.profiles import Profile, ProfileError, build_profile, parse_override_value


class SimSettings(BaseSettings):
    """Everything ``inferstack sim`` can be told; CLI options win over the environment.

    The dedicated engine options (``max_num_seqs`` ...) are shortcuts for profile
    overrides; ``overrides`` takes any other profile key (``hardware.peak_tflops``).
    """

    model_config = SettingsConfigDict(env_prefix="INFERSTACK_SIM_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    profile: str = "instant"
    profiles_file: Path | None = None
    model: str | None = Field(None, min_length=1, description="served model name override")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    access_log: bool = False
    keep_alive_s: int = Field(65, ge=30)
    shutdown_timeout_s: int = Field(5, ge=0)
    seed: int = 0

    max_num_seqs: int | None = Field(None, gt=0)
    max_num_batched_tokens: int | None = Field(None, gt=0)
    max_model_len: int | None = Field(None, gt=0)
    kv_cache_tokens: int | None = Field(None, gt=0)
    ttft_ms: float | None = Field(None, ge=0)
    itl_ms: float | None = Field(None, ge=0)
    overrides: dict[str, Any] = Field(default_factory=dict)

    error_rate: float = Field(0.0, ge=0, le=1)
    stall_rate: float = Field(0.0, ge=0, le=1)
    stall_ms: float = Field(2000.0, ge=0)
    crash_after: int | None = Field(None, ge=0)
    startup_delay_ms: float = Field(0.0, ge=0)

    def profile_overrides(self) -> dict[str, Any]:
        """All profile overrides: ``overrides`` first, then the dedicated options."""
        out: dict[str, Any] = {
            k: parse_override_value(v) if isinstance(v, str) else v
            for k, v in self.overrides.items()
        }
        shortcuts = {
            "engine.max_num_seqs": self.max_num_seqs,
            "engine.max_num_batched_tokens": self.max_num_batched_tokens,
            "engine.max_model_len": self.max_model_len,
            "engine.kv_cache_tokens": self.kv_cache_tokens,
            "fixed.ttft_ms": self.ttft_ms,
            "fixed.itl_ms": self.itl_ms,
            "served_model_name": self.model,
        }
        out.update({k: v for k, v in shortcuts.items() if v is not None})
        if self.ttft_ms is not None or self.itl_ms is not None:
            out["mode"] = "fixed"
        return out

    def resolve_profile(self) -> Profile:
        """The validated profile this configuration describes (raises ProfileError)."""
        return build_profile(self.profile, self.profile_overrides(), self.profiles_file)


class SettingsError(ValueError):
    """A one-line, user-facing configuration error."""


def load_settings(**values: Any) -> tuple[SimSettings, Profile]:
    """Build settings from keyword values (None = not given) plus the environment.

    Raises :class:`SettingsError` with a single line naming the bad field.
    """
    given = {k: v for k, v in values.items() if v is not None}
    try:
        settings = SimSettings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        raise SettingsError(f"invalid value for {field}: {err['msg']}") from None
    try:
        profile = settings.resolve_profile()
    except ProfileError as exc:
        raise SettingsError(str(exc)) from None
    return settings, profile
