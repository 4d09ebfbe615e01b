"""Property-based fuzzing from the gateway's own OpenAPI document: no input yields a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.gateway.conftest import Stack
from tests.procs import TEST_KEY


def test_generated_requests_never_get_a_server_error(stack: Stack) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    proc = subprocess.run(
        [
            cli,
            "run",
            stack.gateway.url + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "120",
            "--mode",
            "all",
            "--seed",
            "20261121",
            "--header",
            f"Authorization: Bearer {TEST_KEY}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated, out[-3000:]
    assert int(generated.group(1)) >= 300
    assert generated.group(1) == generated.group(2), out[-3000:]
