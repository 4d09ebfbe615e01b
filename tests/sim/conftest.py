"""Fixtures for the engine simulator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from simproc import SimServer, running


@pytest.fixture(scope="session")
def instant_server() -> Iterator[SimServer]:
    with running(SimServer("--profile", "instant", "--seed", "7")) as (server,):
        yield server
