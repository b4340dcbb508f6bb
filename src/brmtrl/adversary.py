"""The simulated adversary's step: omniscient attacks, applied to a round's updates before the server
step receives them.

Attacks that read the honest updates of the round (ALIE, IPM, min-max, min-sum, mimic, Fang:
:data:`brmtrl.attacks.OMNISCIENT`) cannot run on a node: no node sees another's update. A simulation
(the built-in engine, Flower's simulation engine) plays that adversary here, between the clients and
the server: it knows which senders are Byzantine (the simulation's truth) and the attack's settings
(``attack.*``), rewrites the Byzantine rows from the honest ones, and hands the server step what the
server would have received. The server step (:func:`brmtrl.server.server_step`) never sees any of this;
a real federation has no such step.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

import torch

from . import attacks as attack_mod
from .client import client_generator
from .device import for_aggregation
from .server import screen

__all__ = ["Adversary", "omniscient_adversary"]

#: (the round's updates as received, their senders, the round) -> the updates the server receives
Adversary = Callable[[Sequence[Any], Sequence[Any], int], list[Any]]


def omniscient_adversary(cfg: Mapping[str, Any], byzantine: Collection[Any], *, size: int) -> Adversary | None:
    """The config's omniscient attack as a step on the round's updates (None when the attack is not
    omniscient or no client is Byzantine). In round r, the rows of the ``byzantine`` senders among the
    well-formed updates (those the server's screening would accept; the attacker knows the published
    screening settings, ``aggregator.max_norm*``) are replaced by what the attack crafts from the honest
    ones; the others pass unchanged. The attack draws from ``client_generator(seed, r, 0, stream=7)``,
    so every engine crafts the same rows."""
    name = cfg["attack.name"]
    if not attack_mod.is_omniscient(name) or not byzantine:
        return None
    byz = set(byzantine)
    max_norm, ratio = float(cfg["aggregator.max_norm"]), float(cfg["aggregator.max_norm_ratio"])

    def step(updates: Sequence[Any], senders: Sequence[Any], r: int) -> list[Any]:
        updates = [for_aggregation(u) for u in updates]   # float64 work: MPS updates on the CPU
        out = list(updates)
        kept, _ = screen(updates, senders, size=size, max_norm=max_norm, max_norm_ratio=ratio)
        if not any(senders[i] in byz for i in kept):
            return out
        attack = attack_mod.server_attack(cfg, client_generator(int(cfg["seed"]), r, 0, stream=7))
        assert attack is not None
        x = torch.stack([updates[i].to(torch.float64) for i in kept])
        x = attack(x, torch.tensor([senders[i] in byz for i in kept], device=x.device))
        for j, i in enumerate(kept):
            out[i] = x[j]
        return out

    return step
