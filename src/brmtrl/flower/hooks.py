"""What Flower's simulation engine adds around the server's round loop, and a real federation never has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection

from ..server import Aggregation, UpdatesHook

__all__ = ["SimulationHooks"]


@dataclass(frozen=True)
class SimulationHooks:
    """What Flower's simulation engine adds around the server's round loop, and a real federation never
    has (:mod:`brmtrl.flower.simulation` builds it; a deployed ``ServerApp`` runs without).

    ``adversary``: given the clients that described themselves as Byzantine, the size of φ and the server's
    declared aggregation (which an attack that knows the defense tunes itself against), the
    simulated omniscient adversary's step (:func:`brmtrl.adversary.omniscient_adversary`), applied to
    the round's updates before the server step receives them, or None. ``roles_from_seed``: tell the
    nodes that the config's seed picks the Byzantine clients (outside a simulation a node is Byzantine
    only when its own node config says so). ``notes``: lines for ``results.json``."""

    adversary: Callable[[Collection[int], int, Aggregation], UpdatesHook | None] | None = None
    roles_from_seed: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
