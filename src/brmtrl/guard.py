"""The client-side guard: an honest client never adopts, for its own scored model, a representation that its
own data says is worse than the one it can keep for itself.

BR-MTRL's heads are private, but φ comes from the server, and no aggregator removes the error that
Byzantine clients can put into it under heterogeneity (Allouah et al., NeurIPS 2023; Karimireddy et al.,
ICLR 2022). Personalization bounds that damage (Ditto, Li et al., ICML 2021; Allouah et al., NeurIPS 2024,
arXiv 2409.20329). With ``guard.name = "ditto"`` each client runs a second, personal model beside the
federated one:

* its data: ``guard.validation`` of its training samples (at least one, drawn once per client from the
  seed) are a validation part it never trains on; everything it trains (the federated local update
  included) uses the rest. Test data is never read.
* its personal model (φᵢ, hᵢ): started from the φ the client first receives and its head; every round
  the client is sampled, after its federated update, it trains its personal head for
  ``train.head_epochs`` with φᵢ frozen, then φᵢ for ``guard.epochs`` epochs on Ditto's objective

      Fᵢ(φᵢ) + (λ/2) ‖φᵢ − φ‖²,   λ = ``guard.lam``, φ the representation it received,

  so that φᵢ stays close to the federation when the federation helps and follows the client's own data
  when it does not. The personal model never leaves the client.
* its scored model: of the federated model (φ with its own head, scored as the protocol says) and its
  personal model, the one with the higher accuracy on its validation part (ties: the federated one).

The federation itself is unchanged: clients still send the change of φ their federated update made, and
the server aggregates as before; the guard only decides which model each client uses. Cost: a second
head-and-φ pass per sampled client, one validation pass per scored client, and memory for φᵢ and hᵢ per
client (``guard.name = "none"``, the paper's method, has none of these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .generators import client_generator
from .local_update import Augment, SGDSettings, evaluate, sgd_epochs
from .models import SplitModel
from .split import freeze_all_but, get_flat, set_flat

__all__ = ["Guard", "validation_split"]

Data = tuple[torch.Tensor, torch.Tensor]

#: the generator stream that draws a client's validation part (round 0)
SPLIT_STREAM = 8


def validation_split(cfg: Mapping[str, Any], data: Data, client: int) -> tuple[Data, Data]:
    """(training part, validation part) of a client's training data: ``guard.validation`` of its samples
    (at least one when it has two or more; none otherwise), drawn with (seed, client) only, so every
    engine and every round splits alike."""
    x, y = data
    n = len(y)
    k = min(max(1, int(round(float(cfg["guard.validation"]) * n))), n - 1) if n >= 2 else 0
    perm = torch.randperm(n, generator=client_generator(int(cfg["seed"]), 0, int(client), SPLIT_STREAM)).to(y.device)
    val, train = perm[:k].sort().values, perm[k:].sort().values
    return (x[train], y[train]), (x[val], y[val])


@dataclass(frozen=True)
class Guard:
    """The guard's settings (``guard.*``) and its per-client state: a flat vector [φᵢ, hᵢ, started]."""

    lam: float
    epochs: int
    head_epochs: int
    rep_size: int
    head_size: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model: SplitModel) -> "Guard | None":
        """None when ``guard.name = "none"``."""
        if cfg["guard.name"] == "none":
            return None
        return cls(float(cfg["guard.lam"]), int(cfg["guard.epochs"]), int(cfg["train.head_epochs"]),
                   get_flat(model, "rep").numel(), get_flat(model, "head").numel())

    @property
    def state_size(self) -> int:
        return self.rep_size + self.head_size + 1

    def initial_state(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(self.state_size, device=device)

    def personal(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(φᵢ, hᵢ), or None before the client's first round."""
        if float(state[-1]) == 0.0:
            return None
        return state[:self.rep_size], state[self.rep_size:self.rep_size + self.head_size]

    def update(self, model: SplitModel, sgd: SGDSettings, received: torch.Tensor, head: torch.Tensor,
               state: torch.Tensor, data: Data, generator: torch.Generator,
               augment: Augment | None = None) -> torch.Tensor:
        """The personal model after a round in which the client received φ = ``received`` and its federated
        update left it ``head``: head epochs with φᵢ frozen, then ``epochs`` on φᵢ with the proximal term
        toward ``received`` (Ditto). Returns the new state."""
        x, y = data
        if len(y) == 0:
            return state
        start = self.personal(state)
        rep, own_head = (received, head) if start is None else start
        set_flat(model, "rep", rep.to(received.dtype))
        set_flat(model, "head", own_head.to(head.dtype))
        model.train()
        if self.head_epochs:
            sgd_epochs(model, freeze_all_but(model, "head"), x, y, self.head_epochs, sgd, generator, augment)
        if self.epochs:
            params = freeze_all_but(model, "rep")
            current = get_flat(model, "rep")
            set_flat(model, "rep", received)
            anchor = [p.detach().clone() for p in params]
            set_flat(model, "rep", current)
            sgd_epochs(model, params, x, y, self.epochs, sgd, generator, augment, prox=(anchor, self.lam))
        for p in model.parameters():
            p.requires_grad_(True)
        rep_now, head_now = get_flat(model, "rep"), get_flat(model, "head")
        out = torch.cat([rep_now, head_now, torch.ones(1, dtype=rep_now.dtype, device=rep_now.device)])
        return out.to(device=state.device, dtype=state.dtype)

    @torch.no_grad()
    def use_personal(self, model: SplitModel, shared: torch.Tensor, head: torch.Tensor, state: torch.Tensor,
                     validation: Data) -> bool:
        """Whether the client's personal model scores higher than the federated one (φ = ``shared`` with
        ``head``) on its validation part."""
        personal = self.personal(state)
        if personal is None or len(validation[1]) == 0:
            return False
        set_flat(model, "rep", shared)
        set_flat(model, "head", head)
        federated, _ = evaluate(model, *validation)
        set_flat(model, "rep", personal[0].to(shared.dtype))
        set_flat(model, "head", personal[1].to(head.dtype))
        own, _ = evaluate(model, *validation)
        return own > federated
