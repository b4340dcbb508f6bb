"""Local update rules as data: which part of the model a client shares, and which phases it trains.

A rule is the part of the model exchanged with the server (``shared``; the complement stays private) and
a function of the config giving the phases ``[(part, epochs), ...]`` run one after another, each with
the other parts frozen. BR-MTRL (and FedRep, which is BR-MTRL with the mean) trains ``head_epochs`` on the
head, then ``rep_epochs`` on φ, and shares φ; the baselines are other rows of :data:`RULES`. A config names
a rule by ``algorithm.name``, a built-in one or a plug-in's ``"package.module:name"``
(:func:`resolve_local_rule`); training itself is :mod:`brmtrl.local_update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import PluginError
from .plugin import load_object, resolve_registered
from .split import Part

__all__ = ["RULES", "LocalRule", "complement", "local_epochs", "register_local_rule", "resolve_local_rule"]


@dataclass(frozen=True)
class LocalRule:
    """``shared``: the part exchanged with the server; ``phases(cfg)``: [(part, epochs), ...]."""

    name: str
    shared: Part
    phases: Callable[[Mapping[str, Any]], list[tuple[Part, int]]]
    description: str

    @property
    def private(self) -> Part:
        return complement(self.shared)


def complement(part: Part) -> Part:
    return {"rep": "head", "head": "rep", "all": "none", "none": "all", "top": "bottom",  # type: ignore[return-value]
            "bottom": "top"}[part]  # type: ignore[return-value]


def _alternating(cfg: Mapping[str, Any]) -> list[tuple[Part, int]]:
    return [("head", cfg["train.head_epochs"]), ("rep", cfg["train.rep_epochs"])]


def local_epochs(cfg: Mapping[str, Any]) -> int:
    """Epochs per round of a method that trains its whole model: ``train.local_epochs``, or with ``'auto'``
    BR-MTRL's budget ``train.head_epochs + train.rep_epochs`` (FedRep's code gives every method the same
    ``local_ep``, which FedRep splits between head and φ)."""
    e = cfg["train.local_epochs"]
    return int(cfg["train.head_epochs"]) + int(cfg["train.rep_epochs"]) if e == "auto" else int(e)


def _whole(cfg: Mapping[str, Any]) -> list[tuple[Part, int]]:
    return [("all", local_epochs(cfg))]


RULES: dict[str, LocalRule] = {
    "brmtrl": LocalRule("brmtrl", "rep", _alternating,
                        "alternating GD: head epochs with φ frozen, then φ epochs with the head frozen; sends φ"),
    "fedrep": LocalRule("fedrep", "rep", _alternating, "FedRep (Collins et al. 2021): same local rule as brmtrl"),
    "fedavg": LocalRule("fedavg", "all", _whole, "FedAvg: trains and sends the whole model"),
    "fedavg_ft": LocalRule("fedavg_ft", "all", _whole,
                           "FedAvg, then each client fine-tunes the global model before it is evaluated "
                           "(finetune.part for finetune.epochs on its training data; the global model is unchanged)"),
    "fedper": LocalRule("fedper", "rep", _whole, "FedPer (Arivazhagan et al. 2019): trains all jointly, sends φ"),
    "lg_fedavg": LocalRule("lg_fedavg", "top", _whole,
                           "LG-FedAvg (Liang et al. 2020): local lower layers, shared top layers "
                           "(algorithm.lg_shared_layers; 2 = fc2 and fc3 of the CIFAR-10 CNN, as in FedRep's code)"),
    "local": LocalRule("local", "none", _whole, "Local-only: no communication"),
}

_PARTS = ("rep", "head", "all", "none", "top", "bottom")


def register_local_rule(name: str, shared: Part, phases: Callable[[Mapping[str, Any]], list[tuple[Part, int]]],
                        description: str = "") -> LocalRule:
    """Add a local update rule to :data:`RULES` under ``name`` (a config's ``algorithm.name``): ``shared`` is the
    part sent to the server (``"rep"`` for φ, the head staying private; ``"all"``; ``"top"``/``"bottom"``;
    ``"none"``), ``phases(cfg)`` the ``[(part, epochs), ...]`` trained one after another, each with the other
    parts frozen (it may read any config key, e.g. ``cfg["train.head_epochs"]``)."""
    if shared not in _PARTS:
        raise ValueError(f"local rule {name!r}: shared must be one of {', '.join(map(repr, _PARTS))}. "
                         f"Got {shared!r} instead.")
    rule = LocalRule(name, shared, phases, description or name)
    RULES[name] = rule
    return rule


def resolve_local_rule(name: str) -> LocalRule:
    """The local update rule registered as ``name``. A ``"package.module:name"`` is imported the first time: a
    :class:`LocalRule` is registered as it is; a function ``phases(cfg) -> [(part, epochs), ...]`` becomes a
    rule that shares φ and keeps the head private, as BR-MTRL does, with those phases."""
    def build(obj: Any) -> LocalRule:
        if isinstance(obj, LocalRule):
            return register_local_rule(name, obj.shared, obj.phases, obj.description)
        if not callable(obj):
            raise PluginError(f"{name!r} is a {type(obj).__name__}, neither a LocalRule nor a function of the config")
        return register_local_rule(name, "rep", _checked_phases(name, obj), f"{name}: shares φ, phases from {name}")

    return resolve_registered(RULES, name, build, lambda: ValueError(
        f"unknown local update rule {name!r}; expected one of {', '.join(map(repr, sorted(RULES)))} or "
        "'package.module:name'"), load=load_object)


def _checked_phases(name: str, fn: Callable[..., Any]) -> Callable[[Mapping[str, Any]], list[tuple[Part, int]]]:
    """``fn`` checked on every call: a list of (part, epochs) pairs."""
    def phases(cfg: Mapping[str, Any]) -> list[tuple[Part, int]]:
        out = fn(cfg)
        ok = isinstance(out, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and p[0] in _PARTS and isinstance(p[1], int) and p[1] >= 0
            for p in out)
        if not ok:
            raise PluginError(f"local rule {name!r} returned {out!r}; a list of (part, epochs) pairs is expected, "
                              f"part one of {', '.join(map(repr, _PARTS))}")
        return [(p[0], p[1]) for p in out]

    return phases
