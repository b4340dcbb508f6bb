"""The client's side of a round, the one implementation every engine calls.

Given the server's shared vector (φ for BR-MTRL), a client's private vector (its head) and its data,
a client runs its local rule, keeps the new private vector and sends the change of the shared part
(its *delta*). A Byzantine client then replaces the delta by what its attack sends (attacks that
need only the client's own update run here; attacks that need the honest updates of the round run in
the server step, in simulation only). The built-in :class:`brmtrl.engine.Simulation` and the Flower
``ClientApp`` (:mod:`brmtrl.flower`) call the same functions, so no round logic is written twice.

Two paths with one result, tested equal (in the manner of ``torch.optim``'s single- and multi-tensor
SGD): :func:`train_client` for one client (what a Flower node runs) and :func:`train_clients` for all
sampled clients of a round, whose head phase runs for every client at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from . import attacks as attack_mod
from .generators import client_generator
from .guard import validation_split
from .local_update import (Augment, LocalRule, SGDSettings, compute_features, evaluate, train_heads_together,
                           train_phases)
from .models import SplitModel
from .split import Part, get_flat, set_flat

__all__ = ["ClientResult", "EvalResult", "attack_update", "client_generator", "evaluate_client", "features_of",
           "fine_tune_and_evaluate", "fit_heads", "sent_update", "train_client", "train_clients", "training_data",
           "transfer_sample"]

Data = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ClientResult:
    """What one client's local update produced: the private vector it keeps, the delta of the shared
    part it sends (None when it has nothing to send: no training data) and its sample count."""

    private: torch.Tensor
    delta: torch.Tensor | None
    num_samples: int


@dataclass(frozen=True)
class EvalResult:
    """One client's test accuracy (NaN for regression), mean loss and test-set size; ``personal``: whether
    the guard scored its personal model (None without a guard)."""

    accuracy: float
    loss: float
    num_samples: int
    personal: bool | None = None


def train_client(model: SplitModel, rule: LocalRule, phases: list, sgd: SGDSettings, shared: torch.Tensor,
                 private: torch.Tensor, data: Data, generator: torch.Generator,
                 augment: Augment | None = None) -> ClientResult:
    """One client's local update: load ``shared`` and ``private`` into ``model``, run the rule's
    ``phases`` on ``data``; return the new private vector and the shared part's delta."""
    x, y = data
    if len(y) == 0:
        return ClientResult(private, None, 0)
    set_flat(model, rule.shared, shared)
    set_flat(model, rule.private, private)
    train_phases(model, x, y, phases, sgd, generator, augment)
    new_private = get_flat(model, rule.private).to(private.device)
    delta = get_flat(model, rule.shared).to(shared.device) - shared
    return ClientResult(new_private, delta, len(y))


def train_clients(model: SplitModel, rule: LocalRule, phases: list, sgd: SGDSettings, shared: torch.Tensor,
                  privates: Sequence[torch.Tensor], data: Sequence[Data], generators: Sequence[torch.Generator],
                  augment: Augment | None = None) -> list[ClientResult]:
    """:func:`train_client` for several clients; when the rule starts with head epochs on a shared φ
    (BR-MTRL, FedRep), that phase runs for all of them together
    (:func:`brmtrl.local_update.train_heads_together`) and the rest per client."""
    batched = rule.shared == "rep" and phases and phases[0][0] == "head" and phases[0][1] > 0
    active = [i for i, (_, y) in enumerate(data) if len(y)]
    if not batched or not active:
        return [train_client(model, rule, phases, sgd, shared, p, d, g, augment)
                for p, d, g in zip(privates, data, generators)]
    set_flat(model, "rep", shared)
    heads = train_heads_together(model, [data[i] for i in active], torch.stack([privates[i] for i in active]),
                                 phases[0][1], sgd, [generators[i] for i in active], augment)
    out = [ClientResult(p, None, 0) for p in privates]
    for i, head in zip(active, heads):
        out[i] = train_client(model, rule, phases[1:], sgd, shared, head.to(privates[i].device), data[i],
                              generators[i], augment)
    return out


def training_data(cfg: Mapping[str, Any], data: Data, num_classes: int, byzantine: bool, client: int) -> Data:
    """The data a client trains on: its own training samples (less its validation part when the guard is
    on: :func:`brmtrl.guard.validation_split`), with labels permuted if it is a label-flipping Byzantine
    client (:func:`brmtrl.attacks.flip_labels`)."""
    if cfg["guard.name"] != "none":
        data = validation_split(cfg, data, client)[0]
    x, y = data
    if byzantine and cfg["attack.name"] == "label_flip":
        y = attack_mod.flip_labels(y, num_classes)
    return x, y


def sent_update(cfg: Mapping[str, Any], delta: torch.Tensor, client: int, r: int, byzantine: bool) -> torch.Tensor:
    """What ``client`` sends in round r: its delta, or for a Byzantine client what its attack makes
    of it (attacks that read only the client's own update run client-side, as a real node would;
    omniscient ones run in the server step, in simulation only)."""
    name = cfg["attack.name"]
    if not byzantine or name == "none" or attack_mod.is_omniscient(name):
        return delta
    return attack_update(delta, name, attack_mod.attack_kwargs(cfg, name),
                         client_generator(cfg["seed"], r, client, stream=2))


def transfer_sample(data: Data, samples: int, generator: torch.Generator) -> Data:
    """The ``samples`` training samples a new client fits its head on (drawn with ``generator``)."""
    x, y = data
    keep = torch.randperm(len(y), generator=generator)[:samples].to(y.device)
    return x[keep], y[keep]


def attack_update(delta: torch.Tensor, attack: str, params: Mapping[str, Any],
                  generator: torch.Generator) -> torch.Tensor:
    """What a Byzantine client sends instead of its honest ``delta`` under a non-omniscient attack
    (:data:`brmtrl.attacks.ATTACKS`; ``params`` its keyword arguments): the attack sees this client's
    update only."""
    if attack_mod.is_omniscient(attack):
        raise ValueError(f"attack {attack!r} needs the honest updates of the round; it runs in the server step")
    out = attack_mod.resolve_attack(attack).fn(delta.unsqueeze(0), delta.new_zeros((0, delta.numel())),
                                        generator=generator, **params)
    return out[0].to(delta.dtype)


@torch.no_grad()
def evaluate_client(model: SplitModel, rule: LocalRule, shared: torch.Tensor, private: torch.Tensor,
                    data: Data, features: torch.Tensor | None = None) -> EvalResult:
    """Test accuracy and loss of the model the client holds (``shared`` φ with its own ``private``
    part). ``features``: φ of the client's test inputs, when already computed (rules that share φ)."""
    x, y = data
    if len(y) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    set_flat(model, rule.shared, shared)
    set_flat(model, rule.private, private)
    if features is not None:
        acc, loss = evaluate(model.head, features, y)
    else:
        acc, loss = evaluate(model, x, y)
    return EvalResult(acc, loss, len(y))


def fit_heads(model: SplitModel, shared: torch.Tensor, heads: torch.Tensor, data: Sequence[Data], epochs: int,
              sgd: SGDSettings, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Fit heads (one row each, starting from ``heads``) on ``data`` with φ = ``shared`` frozen: a new
    client's transfer, or FedRep's evaluation protocol, which refits each head on the final φ."""
    set_flat(model, "rep", shared)
    return train_heads_together(model, list(data), heads, epochs, sgd, list(generators))


def features_of(model: SplitModel, shared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """φ(x) with φ = ``shared``, in no-grad chunks."""
    set_flat(model, "rep", shared)
    model.eval()
    return compute_features(model, x)


def fine_tune_and_evaluate(model: SplitModel, weights: torch.Tensor, train: Data, test: Data, part: Part,
                           epochs: int, sgd: SGDSettings, generator: torch.Generator,
                           augment: Augment | None = None) -> EvalResult:
    """Load a whole model (``weights``, as :func:`brmtrl.split.get_flat` of part ``all`` gives it),
    train ``part`` of it (``all`` or ``head``) for ``epochs`` on ``train``, then score it on ``test``.
    FedAvg with fine-tuning (``fedavg_ft``) evaluates each client this way; the transfer baselines
    (FedAvg's model fine-tuned, the network trained from scratch) too. ``model`` is overwritten."""
    x, y = test
    if len(y) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    set_flat(model, "all", weights)
    train_phases(model, train[0], train[1], [(part, epochs)], sgd, generator, augment)
    model.eval()
    with torch.no_grad():
        acc, loss = evaluate(model, x, y)
    return EvalResult(acc, loss, len(y))
