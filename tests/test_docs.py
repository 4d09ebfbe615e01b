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
