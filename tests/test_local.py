"""`inferstack local` (gateway and simulators as plain processes) brings up a working stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.procs import free_port


def test_local_stack_answers_the_printed_curl() -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "inferstack", "local", "--self-test", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"gateway  http://127.0.0.1:{port}" in out
    assert out.count("engine   http://127.0.0.1:") == 2
    curl = re.search(r"^  (curl .*)$", out, re.M)
    assert curl and "Authorization: Bearer sk-local-" in curl.group(1)
    answer = json.loads(out[out.index("{\n") :])
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    assert answer["model"] == "Qwen/Qwen3-32B"
