"""Byzantine attacks: pure functions from the updates the Byzantine clients computed honestly to what
they send. Each takes ``byzantine`` (b, d) and ``honest`` (h, d) stacked φ deltas and a CPU
``torch.Generator``; hyperparameters are keyword-only. Attacks act on φ only: heads are private.

Three families, one module each: :mod:`.basic` needs only the client's own update (a real Byzantine
node runs it; ``honest`` is empty there), :mod:`.omniscient` reads the honest updates of the round
(:data:`OMNISCIENT`; simulation only, the simulated adversary's step: :func:`server_attack`), and
:mod:`.adaptive` also knows the defense: it gets ``aggregate``, the server's aggregate of the round as a
function of the Byzantine rows, and tunes its scale against it (:data:`ADAPTIVE`).

The registry :data:`ATTACKS` maps each config name (``attack.name``) to its :class:`Attack`: the
callable, the ``attack.*`` config keys it takes (key -> keyword) and whether it is omniscient. The
number of Byzantine clients (``attack.byzantine_fraction``) is the truth; the f an aggregator assumes
(``aggregator.f``) is set apart from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..plugin import positional_arity, resolve_registered
from .basic import flip_labels, gaussian, gaussian_additive, inf, label_flip, nan, none, random, sign_flip
from .adaptive import Aggregate, min_max_adaptive, min_sum_adaptive, opt_alie, opt_ipm
from .omniscient import alie, alie_z, fang, ipm, mimic, min_max, min_sum, perturbation_direction

__all__ = ["ADAPTIVE", "ATTACKS", "OMNISCIENT", "Aggregate", "Attack", "alie", "alie_z", "attack_kwargs", "fang",
           "fang_target", "flip_labels", "gaussian", "gaussian_additive", "inf", "ipm", "is_omniscient", "label_flip",
           "mimic", "min_max", "min_sum", "nan", "none", "opt_alie", "opt_ipm", "perturbation_direction", "random",
           "register_attack", "resolve_attack", "server_attack", "sign_flip"]

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
    #: it takes ``aggregate`` (the server's rule as a function of the Byzantine rows); implies omniscient
    adaptive: bool = False


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
    "min_max": Attack(min_max_adaptive, {"perturbation": "perturbation", "tailored": "tailored", "evals": "evals"},
                      omniscient=True, adaptive=True),
    "min_sum": Attack(min_sum_adaptive, {"perturbation": "perturbation", "sum_bound": "bound", "tailored": "tailored",
                                         "evals": "evals"}, omniscient=True, adaptive=True),
    "opt_alie": Attack(opt_alie, {"evals": "evals"}, omniscient=True, adaptive=True),
    "opt_ipm": Attack(opt_ipm, {"evals": "evals", "epsilon": "epsilon"}, omniscient=True, adaptive=True),
    "mimic": Attack(mimic, omniscient=True),
    "fang": Attack(fang, {"fang_target": "target"}, omniscient=True),
}

#: attacks that need the honest updates of the round (applied in the server step, in simulation only)
OMNISCIENT: frozenset[str] = frozenset(name for name, a in ATTACKS.items() if a.omniscient)
#: attacks that also know the server's rule (they get ``aggregate``)
ADAPTIVE: frozenset[str] = frozenset(name for name, a in ATTACKS.items() if a.adaptive)

#: aggregators Fang et al.'s Krum attack targets; every other rule gets the trimmed-mean attack
_KRUM_LIKE = frozenset({"krum", "multi_krum", "bulyan"})


def register_attack(name: str, fn: AttackFn, *, keys: Mapping[str, str] | None = None,
                    omniscient: bool = False, adaptive: bool = False) -> Attack:
    """Add an attack to :data:`ATTACKS` under ``name`` (a config's ``attack.name``), with the signature of
    the built-in ones: ``fn(byzantine (b, d), honest (h, d), *, generator, **params) -> (b, d)``;
    ``keys`` maps ``attack.<key>`` config keys to its keywords; ``omniscient`` when it reads the honest
    rows (then it runs in simulation only, as the simulated adversary's step); ``adaptive`` when it also
    takes ``aggregate``, the server's aggregate of the round as a function of the Byzantine rows
    (:data:`brmtrl.attacks.adaptive.Aggregate`)."""
    attack = Attack(fn, dict(keys or {}), omniscient or adaptive, adaptive)
    ATTACKS[name] = attack
    return attack


def _per_update(name: str, fn: Callable[..., torch.Tensor], takes_generator: bool) -> AttackFn:
    """A plug-in of one update, ``fn(u (d,)[, generator=...]) -> (d,)``, as an attack on stacked rows."""
    def attack(byzantine: torch.Tensor, honest: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        rows = []
        for u in byzantine:
            out = fn(u, generator=generator) if takes_generator else fn(u)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(u.shape):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"attack {name!r} returned {got}; a tensor of shape {tuple(u.shape)} is expected")
            rows.append(out.to(device=u.device, dtype=u.dtype))
        return torch.stack(rows) if rows else byzantine

    return attack


def resolve_attack(name: str) -> Attack:
    """The attack registered as ``name``; a ``"package.module:function"`` name is imported and registered
    the first time: at its simplest a function of the Byzantine client's own honest update (d,) that
    returns what it sends (it may take ``generator``, a CPU ``torch.Generator``). Importing the module
    may instead register a richer entry under that name (:func:`register_attack`)."""
    def build(fn: Callable[..., torch.Tensor]) -> Attack:
        accepted = positional_arity(fn, name, keywords=("generator",))
        return register_attack(name, _per_update(name, fn, "generator" in accepted))

    return resolve_registered(ATTACKS, name, build, lambda: ValueError(
        f"unknown attack {name!r}; expected one of {', '.join(map(repr, sorted(ATTACKS)))} or 'package.module:function'"))


def is_omniscient(name: str) -> bool:
    """Whether attack ``name`` reads the honest clients' updates of the round."""
    return resolve_attack(name).omniscient


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
    kwargs = {kw: cfg[f"attack.{key}"] for key, kw in resolve_attack(name).keys.items()}
    if kwargs.get("z") == "auto":
        kwargs["z"] = None   # alie: the paper's z_max
    if name == "fang":
        kwargs["target"] = fang_target(cfg)
    return kwargs


def server_attack(cfg: Mapping[str, Any], generator: torch.Generator,
                  aggregate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ServerAttack | None:
    """The omniscient attack of the config as the simulated adversary applies it (None for the others):
    the rows under the mask are replaced by what the attack crafts from the rows outside it. An adaptive
    attack also gets ``aggregate``: the server's aggregate of all the rows (n, d) as they would arrive,
    from which it evaluates candidate Byzantine rows in place."""
    name = cfg["attack.name"]
    if not is_omniscient(name):
        return None
    entry = resolve_attack(name)
    fn, kwargs = entry.fn, attack_kwargs(cfg, name)
    if entry.adaptive and aggregate is None:
        raise ValueError(f"attack {name!r} knows the defense: it needs the server's aggregate")

    def attack(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        extra: dict[str, Any] = {}
        if entry.adaptive:
            assert aggregate is not None

            def with_rows(rows: torch.Tensor) -> torch.Tensor:   # the round's aggregate if these rows were sent
                trial = x.clone()
                trial[mask] = rows.to(trial.dtype)
                return aggregate(trial)

            extra["aggregate"] = with_rows
        out[mask] = fn(x[mask], x[~mask], generator=generator, **kwargs, **extra).to(out.dtype)
        return out

    return attack
