"""Examples in the docs stay valid: the gateway settings file example passes --check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_gateway_settings_example_is_valid(tmp_path: Path) -> None:
    text = (DOCS / "gateway.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert example, "docs/gateway.md has no YAML example"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(example.group(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERSTACK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "inferstack", "gateway", "--check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)
    assert [b["name"] for b in settings["backends"]] == ["gpu01-g0", "gpu01-g1"]
    assert settings["api_keys"][0]["id"] == "team-a"


def test_loadtest_doc_commands_use_existing_options() -> None:
    """Every `inferstack bench COMMAND --option` in docs/loadtest.md exists (the CLI module
    imports neither gevent nor Locust, so it can be inspected here)."""
    import typer

    from inferstack.loadtest.cli import app

    group = typer.main.get_command(app)
    blocks = re.findall(r"```sh\n(.*?)```", (DOCS / "loadtest.md").read_text(), re.S)
    text = "\n".join(blocks)
    commands = re.findall(r"inferstack bench (\w+)((?:[^\n]*\\\n)*[^\n]*)", text)
    assert len(commands) >= 8
    for name, rest in commands:
        command = group.commands[name]  # type: ignore[attr-defined]
        known = {opt for p in command.params for opt in p.opts}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert option in known, f"`inferstack bench {name}` has no {option}"
