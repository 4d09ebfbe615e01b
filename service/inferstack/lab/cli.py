"""``inferstack lab``: the embedded default hosts (Debian 12 under systemd-nspawn)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from inferstack.lab import control
from inferstack.lab.run import LabError
from inferstack.lab.shapes import SHAPES

lab_app = typer.Typer(
    help="Fresh Debian 12 hosts with systemd on this machine, on a private bridge, reachable "
    "over SSH; `lab up` writes inventory/lab/hosts.yml for ansible-playbook. Needs root.",
    no_args_is_help=True,
)

InventoryOpt = Annotated[
    Path | None,
    typer.Option(help="Where to write the inventory (default inventory/lab/hosts.yml)."),
]


def _fail(err: LabError) -> None:
    print(f"lab: error: {err}", file=sys.stderr)
    raise typer.Exit(1)


@lab_app.command("up")
def up(
    shape: Annotated[str, typer.Option(help=f"Host layout: {', '.join(SHAPES)}.")] = "single",
    inventory: InventoryOpt = None,
) -> None:
    """Create and boot the hosts (the base root filesystem is cached after the first time)."""
    try:
        control.up(shape, inventory)
    except (LabError, ValueError) as err:
        _fail(LabError(str(err)))


@lab_app.command("down")
def down(inventory: InventoryOpt = None) -> None:
    """Power off and remove every lab host, the bridge and the NAT rule."""
    try:
        control.down(inventory)
    except LabError as err:
        _fail(err)


@lab_app.command("status")
def status() -> None:
    """One line per lab host: name, address, systemd state, inventory groups."""
    rows = control.status()
    if not rows:
        print("no lab hosts")
    for r in rows:
        print(f"{r['host']:<10} {r['address']:<12} {r['state']:<10} {r['groups']}")


@lab_app.command("exec", context_settings={"allow_extra_args": True})
def exec_(ctx: typer.Context, host: Annotated[str, typer.Argument(help="Lab host name.")]) -> None:
    """Run a command inside a lab host (as root, no SSH): inferstack lab exec lab1 -- systemctl."""
    try:
        print(control.machine(host).exec(*ctx.args, check=False), end="")
    except LabError as err:
        _fail(err)
