"""Running host commands for the lab, with errors that say which command failed and why."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class LabError(RuntimeError):
    """A lab step failed; the message says which and what to do."""


def run(cmd: Sequence[str], *, check: bool = True, quiet: bool = True) -> str:
    proc = subprocess.run(list(cmd), capture_output=quiet, text=True, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:] if quiet else []
        raise LabError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}"
            + ("\n  " + "\n  ".join(detail) if detail else "")
        )
    return proc.stdout or ""


def ok(cmd: Sequence[str]) -> bool:
    return subprocess.run(list(cmd), capture_output=True, check=False).returncode == 0
