"""One client of a federation as a real node holds it: its config, data, model and role.

Flower-free, so it is tested without Flower: the ``ClientApp`` (:mod:`brmtrl.flower.client_app`)
only moves tensors between Flower's messages and a :class:`Node`. Every step calls the same
functions as the built-in engine (:mod:`brmtrl.client`, :mod:`brmtrl.federation`), with the same
per-(seed, round, client) generators, so a client trains the same on either engine.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from ..client import (ClientResult, EvalResult, client_generator, evaluate_client, fine_tune_and_evaluate, fit_heads,
                      sent_update, train_client, training_data, transfer_sample)
from ..config import Config, validate
from ..data import FederatedData, load_data
from ..device import configure_determinism, resolve_device
from ..federation import Federation, build_client_model
from ..local_update import RULES, SGDSettings
from ..split import get_flat

__all__ = ["Node", "config_from_json", "config_to_json"]


def config_to_json(cfg: Config) -> str:
    """The resolved config as the one string that travels in Flower's run config."""
    return json.dumps(dict(cfg), sort_keys=True)


def config_from_json(text: str) -> Config:
    return validate(json.loads(text), source="the run config")


@lru_cache(maxsize=2)
def _dataset(cfg_json: str) -> FederatedData:
    """Load (and partition) the dataset once per process: simulated nodes sharing a worker share it."""
    return load_data(config_from_json(cfg_json))


class Node:
    """Client ``partition_id`` of the federation that ``cfg`` describes.

    ``byzantine`` / ``holdout`` override the role the config's seed gives this client (a real
    deployment may start a node as Byzantine through its node config)."""

    def __init__(self, cfg: Config, partition_id: int, *, byzantine: bool | None = None,
                 holdout: bool | None = None, data: FederatedData | None = None):
        self.cfg = cfg
        # a ClientApp under Ray sees only the GPU it was given: any cuda:N is that one
        self.device = resolve_device(cfg["device"], visible_only=True)
        configure_determinism(self.device)
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        self.data = data if data is not None else _dataset(config_to_json(cfg))
        n = self.data.num_clients
        if not 0 <= partition_id < n:
            raise ValueError(f"node config 'partition-id' = {partition_id} but the federation has {n} clients "
                             f"(0 .. {n - 1})")
        self.id = partition_id
        fed = Federation.from_config(cfg, n)
        self.holdout = partition_id in fed.holdout if holdout is None else holdout
        self.byzantine = (partition_id in fed.byzantine) if byzantine is None else byzantine
        self.byzantine = self.byzantine and not self.holdout
        # this client's own samples, moved to the device once (the pooled dataset stays on the CPU: several
        # ClientApp processes may share one GPU)
        x, y = self.data.client_train(partition_id)
        self.train_xy = (x.to(self.device), y.to(self.device))
        x, y = self.data.client_test(partition_id)
        self.test_xy = (x.to(self.device), y.to(self.device))
        self.rule = RULES[cfg["algorithm.name"]]
        self.sgd = SGDSettings.from_config(cfg)
        self.model = build_client_model(cfg, self.data, self.device)
        self.initial_private = get_flat(self.model, self.rule.private).to(self.device)
        from ..data.augment import augmentation_for  # noqa: PLC0415  (data owns the choice)

        self.augment = augmentation_for(self.data, cfg["dataset.augment"])

    @property
    def shared_size(self) -> int:
        return get_flat(self.model, self.rule.shared).numel()

    def _train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return training_data(self.cfg, self.train_xy, self.data.num_classes, self.byzantine)

    def _test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_xy

    def train(self, shared: torch.Tensor, private: torch.Tensor | None, r: int) -> tuple[ClientResult, torch.Tensor | None]:
        """The local update of round r from the server's ``shared`` vector and this node's private one
        (None: the initial one). Returns the result (the new private vector is kept by the node) and
        what the node sends (None: nothing, it has no training data)."""
        private = self.initial_private if private is None else private.to(self.device)
        res = train_client(self.model, self.rule, self.rule.phases(self.cfg), self.sgd, shared.to(self.device),
                           private, self._train_data(), client_generator(self.cfg["seed"], r, self.id), self.augment)
        sent = None if res.delta is None else sent_update(self.cfg, res.delta, self.id, r, self.byzantine)
        return res, sent

    def evaluate(self, shared: torch.Tensor, private: torch.Tensor | None, r: int) -> EvalResult:
        """Test accuracy with this node's own private part; under ``eval.protocol = 'fedrep'`` the head
        is first refitted on ``shared`` (scoring only), as the built-in engine does."""
        private = self.initial_private if private is None else private.to(self.device)
        shared = shared.to(self.device)
        if self.rule.name == "fedavg_ft":   # a fine-tuned copy of the global model, as the built-in engine scores it
            return fine_tune_and_evaluate(self.model, shared, self._train_data(), self._test_data(),
                                          self.cfg["finetune.part"], self.cfg["finetune.epochs"], self.sgd,
                                          client_generator(self.cfg["seed"], r, self.id, stream=5), self.augment)
        if self.cfg["eval.protocol"] == "fedrep" and self.rule.private == "head" and self.cfg["train.head_epochs"] > 0:
            data = self._train_data()
            if len(data[1]):
                gen = client_generator(self.cfg["seed"], r, self.id, stream=4)
                private = fit_heads(self.model, shared, private.unsqueeze(0), [data],
                                    self.cfg["train.head_epochs"], self.sgd, [gen])[0].to(private.dtype)
        return evaluate_client(self.model, self.rule, shared, private, self._test_data())

    def transfer(self, shared: torch.Tensor, r: int) -> EvalResult:
        """A new client's test: fit a fresh head on ``transfer.samples`` of its training samples with
        φ = ``shared`` frozen for ``transfer.epochs``, then score it."""
        gen = client_generator(self.cfg["seed"], r, self.id, stream=3)
        data = transfer_sample(self.train_xy, self.cfg["transfer.samples"], gen)
        shared = shared.to(self.device)
        head = fit_heads(self.model, shared, self.initial_private.unsqueeze(0), [data], self.cfg["transfer.epochs"],
                         self.sgd, [gen])[0]
        return evaluate_client(self.model, self.rule, shared, head, self._test_data())
