from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.procs import TEST_KEY, Proc, processes


@dataclass
class Stack:
    gateway: Proc
    sims: list[Proc]

    def client(self, key: str = TEST_KEY, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key=key, max_retries=0, timeout=30, **kw
        )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Gunicorn with 2 Uvicorn workers in front of 2 instant simulators, shared by a module."""
    tmp: Path = tmp_path_factory.mktemp("stack")
    with processes(tmp) as ps:
        sims = [ps.sim(), ps.sim()]
        gw = ps.gateway(sims, workers=2)
        yield Stack(gw, sims)
