"""Draining engines without a reload: the drain file.

An operator (or ``playbooks/rolling-restart.yml``) writes backend names or URLs into the file
named by the ``drain_file`` setting, one per line (``#`` starts a comment). Every worker re-reads
it each health interval: a drained backend gets no new requests while the requests already on
it finish, so its engine can then be restarted without failing anyone. Removing the line
re-admits it. A missing file drains nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


def parse(text: str) -> frozenset[str]:
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(n.rstrip("/") for n in names if n)


def _read(path: Path) -> frozenset[str]:
    try:
        return parse(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return frozenset()


async def read(path: str | None) -> frozenset[str]:
    """The drained names (file I/O off the event loop)."""
    if not path:
        return frozenset()
    return await asyncio.to_thread(_read, Path(path))
