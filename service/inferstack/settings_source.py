"""Shared settings plumbing: an optional YAML/JSON file under environment variables.

Every component has one settings class (``GatewaySettings``, ``SimSettings``, ...). Values come,
from highest to lowest priority, from constructor arguments, ``INFERSTACK_*`` environment
variables, and the file named by the component's ``*_CONFIG`` variable. A bad value stops
start-up with a one-line message naming the field (:func:`describe_validation_error`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class SettingsFileError(ValueError):
    """The settings file is missing, unreadable or not a mapping."""


def load_settings_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (or JSON, a subset of YAML) mapping from ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsFileError(f"cannot read settings file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"settings file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsFileError(f"settings file {p} must hold a mapping of setting: value")
    return data


class FileSettingsSource(PydanticBaseSettingsSource):
    """Settings source reading the file named by an environment variable."""

    def __init__(self, settings_cls: type[BaseSettings], env_var: str) -> None:
        super().__init__(settings_cls)
        path = os.environ.get(env_var, "").strip()
        self._data: dict[str, Any] = load_settings_file(path) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def describe_validation_error(exc: ValidationError, env_prefix: str) -> str:
    """One line per bad field: ``INFERSTACK_X (x): message`` — never a traceback."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) if loc else "(settings)"
        env = f"{env_prefix}{loc[0].upper()}" if loc else env_prefix.rstrip("_")
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {json.dumps(value, default=str)[:80]})"
        lines.append(f"invalid setting {field} [{env}]: {err['msg']}{shown}")
    return "\n".join(lines)
