"""The simulated adversary's step: omniscient attacks, applied to a round's updates before the server
step receives them.

Attacks that read the honest updates of the round (ALIE, IPM, min-max, min-sum, mimic, Fang:
:data:`brmtrl.attacks.OMNISCIENT`) cannot run on a node: no node sees another's update. A simulation
(the built-in engine, Flower's simulation engine) plays that adversary here, between the clients and
the server: it knows which senders are Byzantine (the simulation's truth) and the attack's settings
(``attack.*``), rewrites the Byzantine rows from the honest ones, and hands the server step what the
server would have received. The server step (:func:`brmtrl.server.server_step`) never sees any of this;
a real federation has no such step.

Attacks that know the defense (:data:`brmtrl.attacks.ADAPTIVE`) also get the server's aggregate of the
round as a function of the rows: the adversary rebuilds it from the server's published settings (the
declared rule, pre-aggregation steps and f, the same :class:`brmtrl.server.Aggregation` the server
uses, and the round's bucketing draw, which depends on the seed and round only). One thing it does not
replay: a rule that starts from the previous round's aggregate (``aggregator.centre = 'previous'``) is
evaluated from its default start, since the adversary keeps no server state.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import torch

from . import aggregators as agg_mod
from . import attacks as attack_mod
from .client import client_generator
from .device import for_aggregation
from .server import Aggregation, UpdatesHook, aggregate, pre_generator, screen

__all__ = ["Adversary", "omniscient_adversary"]

#: the simulated adversary's step: a hook on the round's updates (:data:`brmtrl.server.UpdatesHook`)
Adversary = UpdatesHook


def omniscient_adversary(cfg: Mapping[str, Any], byzantine: Collection[Any], *, size: int,
                         aggregation: Aggregation | None = None) -> Adversary | None:
    """The config's omniscient attack as a step on the round's updates (None when the attack is not
    omniscient or no client is Byzantine). In round r, the rows of the ``byzantine`` senders among the
    well-formed updates (those the server's screening would accept; the attacker knows the published
    screening settings, ``aggregator.max_norm*``) are replaced by what the attack crafts from the honest
    ones; the others pass unchanged. The attack draws from ``client_generator(seed, r, 0, stream=7)``,
    so every engine crafts the same rows. ``aggregation``: the server's declared aggregation, which an
    attack that knows the defense tunes itself against (required for those)."""
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
        seed = int(cfg["seed"])
        server = None if aggregation is None else _server_aggregate(aggregation, seed, r)
        attack = attack_mod.server_attack(cfg, client_generator(seed, r, 0, stream=7), aggregate=server)
        assert attack is not None
        x = torch.stack([updates[i].to(torch.float64) for i in kept])
        x = attack(x, torch.tensor([senders[i] in byz for i in kept], device=x.device))
        for j, i in enumerate(kept):
            out[i] = x[j]
        return out

    return step


def _server_aggregate(aggregation: Aggregation, seed: int, r: int) -> Any:
    """What the server step outputs in round r from accepted rows x (n, d): its pre-steps, rule and f, and
    the round's draw of the random steps (:func:`brmtrl.server.pre_generator`)."""
    random = any(agg_mod.resolve_pre_step(p).random for p in aggregation.pre)

    def point(x: torch.Tensor) -> torch.Tensor:
        return aggregate(x, aggregation, generator=pre_generator(seed, r) if random else None)[0]

    return point
