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

from ..client import ClientResult, EvalResult, client_generator, sent_update, train_client, training_data
from ..evaluation import score_clients, transfer_scores
from ..guard import Guard, validation_split
from ..config import Config, validate
from ..data import SUBSETS, FederatedData, load_data
from ..device import configure_determinism, resolve_device
from ..federation import Federation, build_client_model
from ..local_update import SGDSettings, resolve_local_rule
from ..split import get_flat

__all__ = ["Node", "config_from_json", "config_to_json", "node_data"]


def config_to_json(cfg: Config) -> str:
    """The resolved config as the one string that travels in Flower's run config."""
    return json.dumps(dict(cfg), sort_keys=True)


def config_from_json(text: str) -> Config:
    return validate(json.loads(text), source="the run config")


@lru_cache(maxsize=2)
def _dataset(cfg_json: str, clients: tuple[int, ...] | None = None) -> FederatedData:
    """Load (and partition) the dataset once per process: simulated nodes sharing a worker share it;
    with ``clients``, only their samples (:data:`brmtrl.data.SUBSETS`)."""
    return load_data(config_from_json(cfg_json), clients=clients)


def node_data(cfg: Config, partition_id: int) -> FederatedData:
    """What a node loads for client ``partition_id``: its samples only where the dataset allows it (a fresh
    ClientApp process per message reads 600 CIFAR-10 images, not 60 000), else the whole dataset, shared."""
    clients = (partition_id,) if cfg["dataset.name"] in SUBSETS else None
    return _dataset(config_to_json(cfg), clients)


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
        self.data = data if data is not None else node_data(cfg, partition_id)
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
        self.rule = resolve_local_rule(cfg["algorithm.name"])
        self.sgd = SGDSettings.from_config(cfg)
        self.model = build_client_model(cfg, self.data, self.device)
        self.initial_private = get_flat(self.model, self.rule.private).to(self.device)
        from ..data.augment import augmentation_for  # noqa: PLC0415  (data owns the choice)

        self.augment = augmentation_for(self.data, cfg["dataset.augment"])
        #: the client-side guard (guard.name): its personal model lives in the node's state, never sent
        self.guard = Guard.from_config(cfg, self.model)

    @property
    def shared_size(self) -> int:
        return get_flat(self.model, self.rule.shared).numel()

    def _train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return training_data(self.cfg, self.train_xy, self.data.num_classes, self.byzantine, self.id)

    def train(self, shared: torch.Tensor, private: torch.Tensor | None, r: int) -> tuple[ClientResult, torch.Tensor | None]:
        """The local update of round r from the server's ``shared`` vector and this node's private one
        (None: the initial one). Returns the result (the new private vector is kept by the node) and
        what the node sends (None: nothing, it has no training data)."""
        private = self.initial_private if private is None else private.to(self.device)
        res = train_client(self.model, self.rule, self.rule.phases(self.cfg), self.sgd, shared.to(self.device),
                           private, self._train_data(), client_generator(self.cfg["seed"], r, self.id), self.augment)
        sent = None if res.delta is None else sent_update(self.cfg, res.delta, self.id, r, self.byzantine)
        return res, sent

    def update_guard(self, received: torch.Tensor, res: ClientResult, state: torch.Tensor | None,
                     r: int) -> torch.Tensor | None:
        """This client's personal model after round r (:meth:`brmtrl.guard.Guard.update`, from the φ it
        received), or None without a guard, for a Byzantine client, or with no training data."""
        if self.guard is None or self.byzantine or res.delta is None:
            return state
        state = self.guard.initial_state(self.device) if state is None else state.to(self.device)
        return self.guard.update(self.model, self.sgd, received.to(self.device), res.private, state, self._train_data(),
                                 client_generator(self.cfg["seed"], r, self.id, stream=9), self.augment)

    def evaluate(self, shared: torch.Tensor, private: torch.Tensor | None, r: int,
                 guard_state: torch.Tensor | None = None) -> EvalResult:
        """Test accuracy with this node's own private part, under the config's protocol
        (:func:`brmtrl.evaluation.score_clients`, as the built-in engine scores every honest client);
        with a guard, the better on its validation part of that and its personal model (``guard_state``)."""
        private = self.initial_private if private is None else private.to(self.device)
        guarded = {} if self.guard is None else {
            "guard": self.guard,
            "guard_states": [self.guard.initial_state(self.device) if guard_state is None else guard_state.to(self.device)],
            "validation": [validation_split(self.cfg, self.train_xy, self.id)[1]]}
        return score_clients(self.cfg, self.model, self.rule, self.sgd, shared.to(self.device), private.unsqueeze(0),
                             [self.id], [self._train_data()], [self.test_xy], r, augment=self.augment, **guarded)[0]

    def transfer(self, shared: torch.Tensor, r: int) -> EvalResult:
        """A new client's test (:func:`brmtrl.evaluation.transfer_scores`): fit a fresh head on
        ``transfer.samples`` of its training samples with φ = ``shared`` frozen, then score it."""
        return transfer_scores(self.cfg, self.model, self.rule, self.sgd, shared.to(self.device), self.initial_private,
                               [self.id], [self.train_xy], [self.test_xy], r)[0]
