"""Lab shapes: which hosts exist, their addresses on the lab bridge and their inventory groups."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The lab's /24 (first three octets); another value lets a second lab (the tests') run beside
# an operator's.
SUBNET_PREFIX = os.environ.get("INFERSTACK_LAB_SUBNET", "10.77.0")
BRIDGE_ADDRESS = f"{SUBNET_PREFIX}.1"
PREFIX_LEN = 24
ALL_GROUPS = ("engine", "gateway", "cache", "edge", "monitoring", "loadgen")


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    groups: tuple[str, ...]


SHAPES: dict[str, tuple[HostSpec, ...]] = {
    # Everything on one host: the edge talks to the gateway over its unix socket.
    "single": (HostSpec("lab1", f"{SUBNET_PREFIX}.11", ALL_GROUPS),),
    # The production layout in miniature: an edge in front of two gateway hosts, two engine
    # hosts, and a monitoring host that also runs the cache and the load generator.
    "multi": (
        HostSpec("edge1", f"{SUBNET_PREFIX}.21", ("edge",)),
        HostSpec("gw1", f"{SUBNET_PREFIX}.31", ("gateway",)),
        HostSpec("gw2", f"{SUBNET_PREFIX}.32", ("gateway",)),
        HostSpec("engine1", f"{SUBNET_PREFIX}.41", ("engine",)),
        HostSpec("engine2", f"{SUBNET_PREFIX}.42", ("engine",)),
        HostSpec("mon1", f"{SUBNET_PREFIX}.51", ("monitoring", "cache", "loadgen")),
    ),
}


def shape(name: str) -> tuple[HostSpec, ...]:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown lab shape {name!r}; choose one of {sorted(SHAPES)}") from None
