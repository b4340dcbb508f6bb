"""Byzantine attacks: pure functions from the updates the Byzantine clients computed honestly to what
they send. Each takes ``byzantine`` (b, d) and ``honest`` (h, d) stacked φ deltas and a CPU
``torch.Generator``; hyperparameters are keyword-only. Attacks act on φ only: heads are private.

Two families, one module each: :mod:`.basic` needs only the client's own update (a real Byzantine
node runs it; ``honest`` is empty there), :mod:`.omniscient` reads the honest updates of the round
(:data:`OMNISCIENT`; simulation only, inside the server step: :func:`server_attack`).

The registry :data:`ATTACKS` maps each config name (``attack.name``) to its :class:`Attack`: the
callable, the ``attack.*`` config keys it takes (key -> keyword) and whether it is omniscient. The
number of Byzantine clients (``attack.byzantine_fraction``) is the truth; the f an aggregator assumes
(``aggregator.f``) is set apart from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .basic import flip_labels, gaussian, gaussian_additive, inf, label_flip, nan, none, random, sign_flip
from .omniscient import alie, alie_z, fang, ipm, mimic, min_max, min_sum, perturbation_direction

__all__ = ["ATTACKS", "OMNISCIENT", "Attack", "alie", "alie_z", "attack_kwargs", "fang", "fang_target",
           "flip_labels", "gaussian", "gaussian_additive", "inf", "ipm", "is_omniscient", "label_flip", "mimic", "min_max", "min_sum",
           "nan", "none", "perturbation_direction", "random", "server_attack", "sign_flip"]

AttackFn = Callable[..., torch.Tensor]
#: an attack run in the server step: (stacked updates, Byzantine mask) -> updates
ServerAttack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """A registered attack: ``fn``, its ``attack.<key>`` config keys mapped to ``fn``'s keywords, and
    whether it reads the honest updates of the round."""

    fn: AttackFn
    keys: Mapping[str, str] = field(default_factory=dict)
    omniscient: bool = False


ATTACKS: dict[str, Attack] = {
    "none": Attack(none),
    "gaussian": Attack(gaussian, {"sigma": "sigma"}),
    "gaussian_additive": Attack(gaussian_additive, {"sigma": "sigma"}),
    "sign_flip": Attack(sign_flip, {"scale": "scale"}),
    "random": Attack(random, {"magnitude": "magnitude"}),
    "label_flip": Attack(label_flip),
    "nan": Attack(nan),
    "inf": Attack(inf),
    "alie": Attack(alie, {"z": "z", "direction": "direction"}, omniscient=True),
    "ipm": Attack(ipm, {"epsilon": "epsilon"}, omniscient=True),
    "min_max": Attack(min_max, {"perturbation": "perturbation"}, omniscient=True),
    "min_sum": Attack(min_sum, {"perturbation": "perturbation", "sum_bound": "bound"}, omniscient=True),
    "mimic": Attack(mimic, omniscient=True),
    "fang": Attack(fang, {"fang_target": "target"}, omniscient=True),
}

#: attacks that need the honest updates of the round (applied in the server step, in simulation only)
OMNISCIENT: frozenset[str] = frozenset(name for name, a in ATTACKS.items() if a.omniscient)

#: aggregators Fang et al.'s Krum attack targets; every other rule gets the trimmed-mean attack
_KRUM_LIKE = frozenset({"krum", "multi_krum", "bulyan"})


def is_omniscient(name: str) -> bool:
    """Whether attack ``name`` reads the honest clients' updates of the round."""
    return ATTACKS[name].omniscient


def fang_target(cfg: Mapping[str, Any]) -> str:
    """``attack.fang_target``; ``auto`` picks the attack for the configured rule (Krum's for Krum,
    Multi-Krum and Bulyan, the trimmed mean's for every other)."""
    target = cfg.get("attack.fang_target", "auto")
    if target == "auto":
        return "krum" if cfg.get("aggregator.name") in _KRUM_LIKE else "trimmed_mean"
    return str(target)


def attack_kwargs(cfg: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The keyword arguments of attack ``name`` (default ``attack.name``) read from the config."""
    name = name or cfg["attack.name"]
    kwargs = {kw: cfg[f"attack.{key}"] for key, kw in ATTACKS[name].keys.items()}
    if kwargs.get("z") == "auto":
        kwargs["z"] = None   # alie: the paper's z_max
    if name == "fang":
        kwargs["target"] = fang_target(cfg)
    return kwargs


def server_attack(cfg: Mapping[str, Any], generator: torch.Generator) -> ServerAttack | None:
    """The omniscient attack of the config as the server step applies it (None for the others):
    the rows under the mask are replaced by what the attack crafts from the rows outside it."""
    name = cfg["attack.name"]
    if not is_omniscient(name):
        return None
    fn, kwargs = ATTACKS[name].fn, attack_kwargs(cfg, name)

    def attack(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[mask] = fn(x[mask], x[~mask], generator=generator, **kwargs).to(out.dtype)
        return out

    return attack
