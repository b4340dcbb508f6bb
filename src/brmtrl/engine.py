"""The built-in simulation engine: a template-method round loop over sampled clients.

One round is ``sample_clients → local_updates → attack → server_step → evaluate → checkpoint``; each
step is a method a subclass may override. What a client does and what the server does are not written
here: :mod:`brmtrl.client` and :mod:`brmtrl.server` hold them, and the Flower apps call the same
functions. All randomness of round r comes from generators seeded by ``(seed, r, client)``, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, ConfigError, server_view
from .device import aggregation_device, configure_determinism, resolve_device, synchronize
from .data import FederatedData, augmentation_for, load_data, principal_angle_distance
from .client import ClientResult, client_generator, features_of, sent_update, train_client, train_clients, training_data
from .evaluation import client_scores, score_clients, summarize, transfer_scores
from .guard import Guard, validation_split
from .local_update import LocalRule, SGDSettings, resolve_local_rule
from .federation import Federation, build_client_model, sample_clients
from .models import SplitModel, linear_representation
from .adversary import omniscient_adversary
from .server import Aggregation, StepResult, server_step
from .split import get_flat
from .record import RunRecord
from .reputation import Reputation, without
from .transfer import transfer_study

__all__ = ["RoundRecord", "Simulation", "resolve_device", "client_generator"]

log = logging.getLogger("brmtrl")


@dataclass
class RoundRecord:
    round: int
    sampled: list[int]
    byzantine_sampled: list[int]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    aggregator_info: dict[str, Any] = field(default_factory=dict)
    no_update: list[int] = field(default_factory=list)  # sampled clients with no training data


class Simulation:
    """A federation simulated in one process. ``run()`` returns the ``results.json`` dictionary."""

    def __init__(self, cfg: Config, data: FederatedData | None = None, out_dir: str | Path | None = None,
                 progress: bool = False):
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = resolve_device(cfg["device"])
        configure_determinism(self.device)
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        self.rule: LocalRule = resolve_local_rule(cfg["algorithm.name"])
        self.sgd = SGDSettings.from_config(cfg)
        self.data = (data if data is not None else load_data(cfg)).to(self.device)
        self.model: SplitModel = build_client_model(cfg, self.data, self.device)
        n = self.data.num_clients
        #: who takes part (held-out, training, Byzantine clients; clients per round), computed once
        self.federation = Federation.from_config(cfg, n)
        if not self.honest:
            raise ConfigError(f"config key 'attack.byzantine_fraction' = {cfg['attack.byzantine_fraction']} makes "
                              f"every one of the {len(self.training_clients)} training clients Byzantine; no honest "
                              "client is left to evaluate")
        # the server's declared settings only: it never learns the simulated attack or who is Byzantine
        self.agg = Aggregation.from_config(server_view(cfg), self.num_sampled, len(self.training_clients))
        #: the server's reputation across rounds (reputation.name; None: the paper's method)
        self.reputation = Reputation.from_config(server_view(cfg))
        self.augment = augmentation_for(self.data, cfg["dataset.augment"])
        # state: the server's shared vector and every client's private vector
        self.shared = get_flat(self.model, self.rule.shared).to(self.device)
        self.initial_private = get_flat(self.model, self.rule.private).to(self.device)
        self.initial_all = get_flat(self.model, "all").to(self.device)   # the from-scratch transfer baseline
        self.transfer: dict[str, Any] | None = None
        self.adversary = omniscient_adversary(cfg, self.byzantine, size=self.shared.numel(), aggregation=self.agg)
        self.private = self.initial_private.unsqueeze(0).repeat(n, 1)
        #: the client-side guard (guard.name) and each client's personal model under it
        self.guard = Guard.from_config(cfg, self.model)
        self.guard_state = None if self.guard is None else \
            self.guard.initial_state(self.device).unsqueeze(0).repeat(n, 1)
        #: history, rejections, identification, rounds above f: the record both engines keep alike
        self.record = RunRecord(self.agg.f, self.agg.uses_f)
        #: the previous round's aggregate, where centered clipping starts with aggregator.centre = 'previous'
        self.last_step: torch.Tensor | None = None
        #: the dataset and its partition (:meth:`brmtrl.data.FederatedData.fingerprint`), kept in checkpoints
        self.data_fingerprint = self.data.fingerprint()
        self.start_round = 1
        self.elapsed = {"train_s": 0.0, "eval_s": 0.0, "rounds": 0}

    @property
    def f(self) -> int:
        """The number of Byzantine rows the aggregator assumes per round."""
        return self.agg.f

    @property
    def holdout(self) -> list[int]:
        """New clients of the transfer test: never trained on."""
        return list(self.federation.holdout)

    @property
    def training_clients(self) -> list[int]:
        return list(self.federation.training)

    @property
    def byzantine(self) -> list[int]:
        """The simulation's Byzantine clients (the server never reads them)."""
        return list(self.federation.byzantine)

    @property
    def num_sampled(self) -> int:
        return self.federation.per_round

    @property
    def honest(self) -> list[int]:
        """Training clients that are not Byzantine: the clients every metric is over."""
        return self.federation.honest

    # ------------------------------------------------------------------ the round loop
    def run(self) -> dict[str, Any]:
        rounds = self.cfg["train.rounds"]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=rounds, initial=self.start_round - 1, desc="rounds", unit="round", dynamic_ncols=True)
        t_start = time.perf_counter()
        for r in range(self.start_round, rounds + 1):
            t0 = time.perf_counter()
            record = self.round(r)
            synchronize(self.device)
            t1 = time.perf_counter()
            self.elapsed["train_s"] += t1 - t0
            self.elapsed["rounds"] += 1
            if r % self.cfg["train.eval_every"] == 0 or r == rounds:
                metrics = self.record.add_evaluation(
                    r, self.evaluate(r), round_s=t1 - t0, byzantine_sampled=len(record.byzantine_sampled),
                    rejected=len(record.rejected), no_update=len(record.no_update), step_info=record.aggregator_info)
                if bar is not None:
                    acc = metrics["honest_acc_mean"]
                    bar.set_postfix(acc=f"{acc:.4f}") if acc is not None \
                        else bar.set_postfix(loss=f"{metrics['honest_loss_mean']:.4g}")
            self.elapsed["eval_s"] += time.perf_counter() - t1
            every = self.cfg["train.checkpoint_every"]
            if self.out_dir is not None and every and (r % every == 0 or r == rounds):
                self.checkpoint(r)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.cfg["transfer.shots"] and self.history and self.history[-1]["round"] == rounds:
            t1 = time.perf_counter()
            self.transfer = transfer_study(
                self.cfg, self.model, self.rule, self.sgd, shared=self.shared, initial_head=self.initial_private,
                data_fingerprint=self.data_fingerprint,
                initial_all=self.initial_all,
                clients=[(c, self.data.client_train(c), self.data.client_test(c)) for c in self.holdout])
            self.elapsed["transfer_s"] = time.perf_counter() - t1
        self.elapsed["wall_s"] = time.perf_counter() - t_start
        return self.results()

    def round(self, r: int) -> RoundRecord:
        sampled = self.sample_clients(r)
        byz = set(self.byzantine)
        record = RoundRecord(r, sampled, [c for c in sampled if c in byz])
        t0 = time.perf_counter()
        results = self.local_updates(sampled, r)
        synchronize(self.device)
        train_s = time.perf_counter() - t0
        for c, res in zip(sampled, results):
            self.private[c] = res.private
        if self.guard is not None:
            self.guard_updates(sampled, results, r)
        if self.rule.shared == "none":
            return record
        senders = [c for c, res in zip(sampled, results) if res.delta is not None]
        record.no_update = [c for c, res in zip(sampled, results) if res.delta is None]
        updates = [self.attack(res.delta, c, r) for c, res in zip(sampled, results) if res.delta is not None]
        updates = self.omniscient_attack(updates, senders, r)
        t_agg = time.perf_counter()
        step = self.server_step(updates, senders, r)
        synchronize(aggregation_device(self.device))
        step.info.update(aggregate_s=round(time.perf_counter() - t_agg, 6), clients_train_s=round(train_s, 6))
        record.rejected = [{"round": r, **entry} for entry in step.rejected]
        record.aggregator_info = self.record.record_step(r, senders, step, byz)
        if step.step is not None:
            self.shared = self.shared + step.step.to(device=self.shared.device, dtype=self.shared.dtype)
            if self.agg.history:
                self.last_step = step.step.to(torch.float64)
        return record

    def sample_clients(self, r: int) -> list[int]:
        return sample_clients(self.cfg, self.training_clients, r, self.num_sampled)

    def local_updates(self, clients: list[int], r: int) -> list[ClientResult]:
        """Every sampled client's local update (:func:`brmtrl.client.train_clients`: the head phase of
        all of them at once)."""
        gens = [client_generator(self.cfg["seed"], r, c) for c in clients]
        return train_clients(self.model, self.rule, self.rule.phases(self.cfg), self.sgd, self.shared,
                             [self.private[c] for c in clients], [self.client_data(c) for c in clients], gens,
                             self.augment)

    def local_update(self, client: int, r: int) -> ClientResult:
        """One client's local update alone (:func:`brmtrl.client.train_client`, what a Flower node runs)."""
        return train_client(self.model, self.rule, self.rule.phases(self.cfg), self.sgd, self.shared,
                            self.private[client], self.client_data(client),
                            client_generator(self.cfg["seed"], r, client), self.augment)

    def guard_updates(self, clients: list[int], results: list[ClientResult], r: int) -> None:
        """Each honest sampled client's personal model after the round (:meth:`brmtrl.guard.Guard.update`,
        from the φ it received); Byzantine clients keep none."""
        assert self.guard is not None and self.guard_state is not None
        byz = set(self.byzantine)
        for c, res in zip(clients, results):
            if c in byz or res.delta is None:
                continue
            self.guard_state[c] = self.guard.update(self.model, self.sgd, self.shared, res.private, self.guard_state[c],
                                                    self.client_data(c), client_generator(self.cfg["seed"], r, c, stream=9),
                                                    self.augment)

    def client_data(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training data as it trains on it (:func:`brmtrl.client.training_data`)."""
        return training_data(self.cfg, self.data.client_train(client), self.data.num_classes,
                             client in self.byzantine, client)

    def attack(self, delta: torch.Tensor, client: int, r: int) -> torch.Tensor:
        """What ``client`` sends (:func:`brmtrl.client.sent_update`)."""
        return sent_update(self.cfg, delta, client, r, client in self.byzantine)

    def omniscient_attack(self, updates: list[torch.Tensor], senders: list[int], r: int) -> list[torch.Tensor]:
        """The simulated adversary's step (:func:`brmtrl.adversary.omniscient_adversary`): an attack that
        reads the round's honest updates rewrites the Byzantine rows before the server receives them."""
        if self.adversary is None:
            return updates
        excluded = self.reputation.excluded_among(senders) if self.reputation is not None else ()
        return without(excluded, self.adversary, updates, senders, r)

    def server_step(self, updates: list[torch.Tensor], senders: list[int], r: int) -> StepResult:
        """:func:`brmtrl.server.server_step`, with the server's declared settings only."""
        return server_step(updates, senders, self.agg, size=self.shared.numel(), round_=r, seed=self.cfg["seed"],
                           centre=self.last_step if self.agg.history else None, reputation=self.reputation)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, r: int) -> dict[str, Any]:
        """Each honest client's test accuracy with its own private part (and φ as the rule gives it);
        clients with no test samples are not scored. ``eval.protocol = 'fedrep'`` first runs FedRep's final
        round (:func:`brmtrl.evaluation.final_round`; for scoring only) and weights clients by test-set
        size, as FedRep's code does. ``client_scores``: each scored client's accuracy (the record keeps the
        last evaluation's for ``final``)."""
        shared_rep = self.rule.shared in ("rep", "all")
        feats = features_of(self.model, self.shared[:self._rep_size()], self.data.test_x) \
            if shared_rep and self.rule.name != "fedavg_ft" else None
        honest = self.honest
        tests = [self.data.client_test(c) for c in honest]
        guarded = {} if self.guard is None else {
            "guard": self.guard, "guard_states": self.guard_state[honest],
            "validation": [validation_split(self.cfg, self.data.client_train(c), c)[1] for c in honest]}
        results = score_clients(self.cfg, self.model, self.rule, self.sgd, self.shared, self.private[honest], honest,
                                [self.client_data(c) for c in honest], tests, r, augment=self.augment,
                                test_features=None if feats is None else [feats[self.data.test_index(c)] for c in honest],
                                **guarded)
        out: dict[str, Any] = {"round": r}
        out.update(summarize(results, weighted=self.cfg["eval.protocol"] == "fedrep",
                             classification=self.data.task == "classification"))
        out["client_scores"] = client_scores(honest, results)
        if self.holdout and feats is not None and self.rule.private == "head" and self.data.task == "classification":
            out["transfer_acc_mean"] = self.transfer_accuracy(r, feats)
        b = linear_representation(self.model)
        if "B_star" in self.data.extras and shared_rep and b is not None:
            out["subspace_distance"] = principal_angle_distance(b.cpu().double().numpy(), self.data.extras["B_star"])
        return out

    def _rep_size(self) -> int:
        """Length of φ at the front of the shared vector (all of it when the rule shares φ only)."""
        return self.shared.numel() if self.rule.shared == "rep" else sum(p.numel() for p in self.model.rep.parameters())

    def transfer_accuracy(self, r: int, test_features: torch.Tensor) -> float:
        """Mean test accuracy of the held-out clients after each fits a fresh head (the initial one)
        on ``transfer.samples`` of its training samples, with the current φ frozen
        (:func:`brmtrl.evaluation.transfer_scores`); ``test_features``: φ of the pooled test set."""
        res = transfer_scores(self.cfg, self.model, self.rule, self.sgd, self.shared, self.initial_private,
                              self.holdout, [self.data.client_train(c) for c in self.holdout],
                              [self.data.client_test(c) for c in self.holdout], r,
                              test_features=[test_features[self.data.test_index(c)] for c in self.holdout])
        accs = [e.accuracy for e in res if e.num_samples]
        return float(np.mean(accs)) if accs else float("nan")

    # ------------------------------------------------------------------ results and checkpoints
    @property
    def history(self) -> list[dict[str, Any]]:
        return self.record.history

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return self.record.rejected

    @property
    def identification(self) -> list[dict[str, Any]]:
        return self.record.identification

    def results(self) -> dict[str, Any]:
        names = {"byzantine_client_names": [self.data.client_names[i] for i in self.byzantine]} \
            if self.data.client_names else {}
        rounds = max(self.elapsed["rounds"], 1)
        return self.record.results(
            config=self.cfg.nested(), engine="builtin", data=self.data.summary(),
            final=self.record.final(byzantine=self.byzantine, holdout=self.holdout,
                                    extra={**names, "honest_clients": len(self.honest)}),
            transfer=self.transfer,
            short_rounds=[],  # rounds with fewer clients than sampled: never in one process
            reputation=None if self.reputation is None else self.reputation.summary(self.byzantine),
            notes=[],
            timing={
                "total_s": round(self.elapsed.get("wall_s", 0.0), 4),
                "per_round_s": round(self.elapsed["train_s"] / rounds, 4),
                "eval_total_s": round(self.elapsed["eval_s"], 4),
                "rounds_timed": self.elapsed["rounds"],
                "device": str(self.device),
                "torch_threads": torch.get_num_threads(),
            })

    def state(self, r: int) -> dict[str, Any]:
        """What a checkpoint after round ``r`` holds: the run's state and the configuration it belongs
        to, with its fingerprint (:mod:`brmtrl.checkpoint`)."""
        from .checkpoint import config_fingerprint, config_identity

        guard = {} if self.guard_state is None else {"guard_state": self.guard_state.cpu()}
        if self.reputation is not None:
            guard["reputation"] = self.reputation.state()
        return {"round": r, "rounds": self.cfg["train.rounds"], "shared": self.shared.cpu(),
                "private": self.private.cpu(), **guard,
                **self.record.state(), "elapsed": dict(self.elapsed),
                "last_step": None if self.last_step is None else self.last_step.cpu(),
                "config": config_identity(self.cfg), "fingerprint": config_fingerprint(self.cfg),
                "data_fingerprint": self.data_fingerprint}

    def checkpoint(self, r: int) -> Path:
        """Write :meth:`state` atomically to ``out_dir/checkpoint.pt``."""
        assert self.out_dir is not None
        return save_checkpoint(self.out_dir, self.state(r))

    def restore(self, run_dir: str | Path) -> None:
        """Continue from ``run_dir/checkpoint.pt``; a checkpoint of another configuration, or one whose
        tensors do not fit this model, is a :class:`brmtrl.checkpoint.CheckpointError`."""
        from .checkpoint import CHECKPOINT, CheckpointError, check_fits

        st = load_checkpoint(run_dir, cfg=self.cfg)
        where = f"checkpoint {str(Path(run_dir) / CHECKPOINT)!r}"
        check_fits("the shared vector (φ)", st["shared"], self.shared, where)
        check_fits("the clients' private vectors (heads)", st["private"], self.private, where)
        self.shared = st["shared"].to(self.device)
        self.private = st["private"].to(self.device)
        if self.guard_state is not None:
            if "guard_state" not in st:
                raise CheckpointError(f"{where} has no guard state (it was written with guard.name = 'none')")
            check_fits("the clients' personal models (guard)", st["guard_state"], self.guard_state, where)
            self.guard_state = st["guard_state"].to(self.device)
        if self.reputation is not None:
            if "reputation" not in st:
                raise CheckpointError(f"{where} has no reputation state (it was written with reputation.name = 'none')")
            self.reputation.restore(st["reputation"])
        self.record.restore(st)
        last = st.get("last_step")
        self.last_step = None if last is None else last.to(aggregation_device(self.device))
        self.elapsed = dict(st["elapsed"])
        self.start_round = int(st["round"]) + 1
