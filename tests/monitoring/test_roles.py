"""Monitoring roles follow the role conventions: every default documented in argument_specs,
prefixed with the role name, with a comment; tasks in preflight/install/configure."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.monitoring.conftest import ROOT

ROLES = [
    "prometheus",
    "alertmanager",
    "grafana",
    "node_exporter",
    "nginx_exporter",
    "redis_exporter",
    "dcgm_exporter",
]


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_documented_and_specified(role: str) -> None:
    path = ROOT / "roles" / role
    text = (path / "defaults" / "main.yml").read_text()
    defaults = yaml.safe_load(text)
    specs = yaml.safe_load((path / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert set(defaults) == set(options)
    assert set(specs["render"]["options"]) == {f"{role}_render_dir"}
    lines = text.splitlines()
    for name in defaults:
        assert name.startswith(f"{role}_")
        assert options[name]["type"] and options[name]["description"]
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{name}:"))
        above = lines[:i]
        while above and re.match(rf"^{role}_\w+:|^  ", above[-1]):
            above.pop()  # a group of related variables shares one comment
        assert above and above[-1].startswith("#"), f"{name} has no comment"
    main = (path / "tasks" / "main.yml").read_text()
    for step in ("preflight", "install", "configure"):
        assert f"import_tasks: {step}.yml" in main and f"[{role}, {step}]" in main
    assert (path / "tasks" / "render.yml").is_file()
