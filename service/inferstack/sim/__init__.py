"""Engine simulator: vLLM's OpenAI server surface and metrics over a modelled GPU.

Run it with ``inferstack sim`` or ``python -m inferstack.sim``; embed it with
:func:`inferstack.sim.app.create_app`.
"""

from __future__ import annotations

__all__ = ["SimSettings", "create_app"]

from inferstack.sim.app import create_app
from inferstack.sim.settings import SimSettings
