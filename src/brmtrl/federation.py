"""Who takes part, and how: the roles of the clients and the round's sample, the same for every engine.

From the config and the number of clients alone (seeded by ``seed``): the held-out clients of the
transfer test (never sampled, never Byzantine), the Byzantine clients among the rest, the clients
sampled in round r, and the model every client builds. The built-in simulation and the Flower apps
both call these, so the same seed gives the same federation on either engine. In a real deployment a
node's own config (``byzantine``, ``transfer``) can override its role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .data import FederatedData
from .models import SplitModel, build_model

__all__ = ["Federation", "build_client_model", "build_model_for", "model_spec", "byzantine_clients", "holdout_clients", "num_sampled", "sample_clients"]


@dataclass(frozen=True)
class Federation:
    """Who takes part, computed once from the config and the number of clients: the held-out clients of
    the transfer test, the training clients, the Byzantine ones among them (the simulation's truth;
    a real node's own config may override its role) and how many are sampled per round. The built-in
    engine, a Flower node and the sweep's up-front checks all take it from here."""

    num_clients: int
    holdout: tuple[int, ...]
    training: tuple[int, ...]
    byzantine: tuple[int, ...]
    per_round: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], num_clients: int) -> "Federation":
        held = holdout_clients(cfg, num_clients)
        training = [i for i in range(num_clients) if i not in set(held)]
        return cls(num_clients, tuple(held), tuple(training), tuple(byzantine_clients(cfg, training)),
                   num_sampled(cfg, len(training)))

    @property
    def honest(self) -> list[int]:
        """Training clients that are not Byzantine: the clients every metric is over."""
        byz = set(self.byzantine)
        return [i for i in self.training if i not in byz]


def holdout_clients(cfg: Mapping[str, Any], num_clients: int) -> list[int]:
    """New clients for the transfer test: ``transfer.clients`` of them, never trained on."""
    k = cfg["transfer.clients"]
    rng = np.random.default_rng([cfg["seed"], 13])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False)) if k else []


def byzantine_clients(cfg: Mapping[str, Any], training: Sequence[int]) -> list[int]:
    """round(``attack.byzantine_fraction`` · |training|) of the training clients (none without attack)."""
    k = int(round(cfg["attack.byzantine_fraction"] * len(training)))
    if cfg["attack.name"] == "none" or k == 0:
        return []
    rng = np.random.default_rng([cfg["seed"], 11])
    return sorted(int(i) for i in rng.choice(np.asarray(training), size=k, replace=False))


def num_sampled(cfg: Mapping[str, Any], num_training: int) -> int:
    """Clients sampled per round: ``train.participation`` of the training clients, at least one."""
    return max(1, int(round(cfg["train.participation"] * num_training)))


def sample_clients(cfg: Mapping[str, Any], training: Sequence[int], r: int, k: int | None = None) -> list[int]:
    """The clients of round r: ``k`` (default :func:`num_sampled`) of ``training`` without replacement."""
    k = num_sampled(cfg, len(training)) if k is None else min(k, len(training))
    rng = np.random.default_rng([cfg["seed"], r, 1])
    return sorted(int(i) for i in rng.choice(np.asarray(training), size=k, replace=False))


def build_client_model(cfg: Mapping[str, Any], data: FederatedData, device: torch.device) -> SplitModel:
    """The model of the config, initialised from ``seed`` (every client starts from the same one)."""
    return build_model_for(cfg, model_spec(data), device)


def model_spec(data: FederatedData) -> dict[str, Any]:
    """What building the model needs to know of the data (a node sends it to the server)."""
    return {"input_shape": list(data.input_shape), "out_dim": data.out_dim, "default": data.default_model,
            "rank": int(data.extras.get("rank", 0))}


def build_model_for(cfg: Mapping[str, Any], spec: Mapping[str, Any], device: torch.device) -> SplitModel:
    """:func:`build_client_model` from a :func:`model_spec` instead of the data itself."""
    torch.manual_seed(cfg["seed"])
    shape = tuple(int(s) for s in spec["input_shape"])
    model = build_model(cfg["model.name"], input_shape=shape, out_dim=int(spec["out_dim"]),
                        hidden=cfg["model.hidden"], rep_dim=cfg["model.rep_dim"] or int(spec["rank"]),
                        default=str(spec["default"])).to(device)
    if len(shape) == 3 and cfg["model.memory_format"] in ("auto", "channels_last"):
        model.use_channels_last()
    model.top_layers = cfg["algorithm.lg_shared_layers"]
    return model
