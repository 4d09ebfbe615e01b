"""``python -m inferstack.sim``: the engine simulator without the top-level CLI."""

from __future__ import annotations

import typer

from inferstack.sim.cli import sim

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(sim)

if __name__ == "__main__":
    app(prog_name="python -m inferstack.sim")
