"""The built-in simulation engine: a template-method round loop over sampled clients.

One round is ``sample_clients → local_updates → attack → screen → aggregate → evaluate → checkpoint``;
each step is a method a subclass may override. All randomness of round r comes from generators
seeded by ``(seed, r, client)``, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import aggregators as agg_mod
from . import attacks as attack_mod
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, ConfigError
from .data import FederatedData, load_data, principal_angle_distance, random_crop_flip
from .local_update import (RULES, LocalRule, SGDSettings, compute_features, evaluate, train_heads_together,
                           train_phases)
from .models import SplitModel, build_model, linear_representation
from .split import get_flat, set_flat

__all__ = ["RoundRecord", "Simulation", "resolve_device", "client_generator"]

log = logging.getLogger("brmtrl")


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present, then Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' = {name!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("config key 'device' = 'mps' but MPS is not available on this machine; use 'auto' or 'cpu'")
    return torch.device(name)


def client_generator(seed: int, round_: int, client: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one client in one round, independent of every other (seed, round, client)."""
    state = np.random.SeedSequence([seed, round_, client, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@dataclass
class RoundRecord:
    round: int
    sampled: list[int]
    byzantine_sampled: list[int]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    aggregator_info: dict[str, Any] = field(default_factory=dict)


class Simulation:
    """A federation simulated in one process. ``run()`` returns the ``results.json`` dictionary."""

    def __init__(self, cfg: Config, data: FederatedData | None = None, out_dir: str | Path | None = None,
                 progress: bool = False):
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = resolve_device(cfg["device"])
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        self.rule: LocalRule = RULES[cfg["algorithm.name"]]
        self.sgd = SGDSettings.from_config(cfg)
        self.data = (data if data is not None else load_data(cfg)).to(self.device)
        torch.manual_seed(cfg["seed"])
        self.model: SplitModel = build_model(
            cfg["model.name"], input_shape=self.data.input_shape, out_dim=self.data.out_dim,
            hidden=cfg["model.hidden"], rep_dim=cfg["model.rep_dim"] or self.data.extras.get("rank", 0),
            default=self.data.default_model,
        ).to(self.device)
        if self.data.train_x.dim() == 4 and cfg["model.memory_format"] in ("auto", "channels_last"):
            self.model.use_channels_last()
        n = self.data.num_clients
        self.holdout = self._holdout_set()
        held = set(self.holdout)
        self.training_clients = [i for i in range(n) if i not in held]
        self.num_sampled = max(1, int(round(cfg["train.participation"] * len(self.training_clients))))
        self.byzantine = self._byzantine_set()
        self.f = self._resolve_f()
        self.augment = random_crop_flip if (cfg["dataset.augment"] and self.data.train_x.dim() == 4) else None
        # state: the server's shared vector and every client's private vector
        self.shared = get_flat(self.model, self.rule.shared).to(self.device)
        self.initial_private = get_flat(self.model, self.rule.private).to(self.device)
        self.private = self.initial_private.unsqueeze(0).repeat(n, 1)
        self.history: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.start_round = 1
        self.elapsed = {"train_s": 0.0, "eval_s": 0.0, "rounds": 0}

    # ------------------------------------------------------------------ setup helpers
    def _holdout_set(self) -> list[int]:
        """New clients for the transfer test: never sampled in training, never Byzantine."""
        k = self.cfg["transfer.clients"]
        rng = np.random.default_rng([self.cfg["seed"], 13])
        return sorted(int(i) for i in rng.choice(self.data.num_clients, size=k, replace=False)) if k else []

    def _byzantine_set(self) -> list[int]:
        pool = np.asarray(self.training_clients)
        k = int(round(self.cfg["attack.byzantine_fraction"] * len(pool)))
        if self.cfg["attack.name"] == "none":
            k = 0
        rng = np.random.default_rng([self.cfg["seed"], 11])
        return sorted(int(i) for i in rng.choice(pool, size=k, replace=False)) if k else []

    def _resolve_f(self) -> int:
        """``aggregator.f``: 'auto' is the expected number of Byzantine clients among the sampled,
        lowered to what the rule tolerates; an explicit value it cannot tolerate is a config error."""
        name, m = self.cfg["aggregator.name"], self.num_sampled
        rule = agg_mod.AGGREGATORS[name]
        f = self.cfg["aggregator.f"]
        if rule.min_rows is not None and m < rule.min_rows(0):
            raise ConfigError(f"config key 'aggregator.name' = {name!r} needs at least {rule.min_rows(0)} clients "
                              f"per round, but train.participation samples {m}; raise train.participation")
        if f == "auto":
            f = math.ceil(self.cfg["attack.byzantine_fraction"] * m) if self.byzantine else 0
            return min(int(f), rule.largest_f(m))
        if rule.min_rows is not None and m < rule.min_rows(f):
            raise ConfigError(
                f"config key 'aggregator.f' = {f} is too large for {name} with {m} clients sampled per round "
                f"(needs {rule.min_rows(f)} or more); lower aggregator.f or raise train.participation"
            )
        return int(f)

    @property
    def honest(self) -> list[int]:
        """Training clients that are not Byzantine: the clients every metric is over."""
        byz = set(self.byzantine)
        return [i for i in self.training_clients if i not in byz]

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
            t1 = time.perf_counter()
            self.elapsed["train_s"] += t1 - t0
            self.elapsed["rounds"] += 1
            if r % self.cfg["train.eval_every"] == 0 or r == rounds:
                metrics = self.evaluate(r)
                metrics.update(round_s=round(t1 - t0, 6), byzantine_sampled=len(record.byzantine_sampled),
                               rejected=len(record.rejected), **record.aggregator_info)
                self.history.append(metrics)
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
        self.elapsed["wall_s"] = time.perf_counter() - t_start
        return self.results()

    def round(self, r: int) -> RoundRecord:
        sampled = self.sample_clients(r)
        byz = set(self.byzantine)
        record = RoundRecord(r, sampled, [c for c in sampled if c in byz])
        if self.rule.shared == "none":
            for c in sampled:
                self.local_update(c, r)
            return record
        deltas = self.local_updates(sampled, r)
        deltas = self.attack(deltas, sampled, r)
        kept, deltas = self.screen(deltas, sampled, record)
        rule = agg_mod.AGGREGATORS[self.cfg["aggregator.name"]]
        if rule.min_rows is not None and len(kept) < rule.min_rows(0):
            log.warning("round %d: only %d valid updates, fewer than %s needs; φ is left unchanged this round",
                        r, len(kept), self.cfg["aggregator.name"])
        elif kept:
            step, info = self.aggregate(deltas)
            self.shared = self.shared + step.to(self.shared.dtype)
            record.aggregator_info = info
        return record

    def sample_clients(self, r: int) -> list[int]:
        rng = np.random.default_rng([self.cfg["seed"], r, 1])
        pool = np.asarray(self.training_clients)
        return sorted(int(i) for i in rng.choice(pool, size=self.num_sampled, replace=False))

    def local_updates(self, clients: list[int], r: int) -> torch.Tensor:
        """Every sampled client's delta of the shared part, stacked (one row per client).

        When the rule starts with head epochs on a shared φ (BR-MTRL, FedRep), that phase runs for
        all clients together (:func:`train_heads_together`); the remaining phases run per client.
        """
        phases = self.rule.phases(self.cfg)
        if not (self.rule.shared == "rep" and phases and phases[0][0] == "head" and phases[0][1] > 0):
            return torch.stack([self.local_update(c, r) for c in clients])
        gens = [client_generator(self.cfg["seed"], r, c) for c in clients]
        data = [self.client_data(c) for c in clients]
        set_flat(self.model, "rep", self.shared)
        heads = train_heads_together(self.model, data, self.private[clients], phases[0][1], self.sgd, gens,
                                     self.augment)
        return torch.stack([self.local_update(c, r, gen=g, head=h, phases=phases[1:], data=d)
                            for c, g, h, d in zip(clients, gens, heads, data)])

    def client_data(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training data as it trains on it (label-flipping clients permute labels)."""
        x, y = self.data.client_train(client)
        if client in self.byzantine and self.cfg["attack.name"] == "label_flip":
            y = attack_mod.flip_labels(y, self.data.num_classes)
        return x, y

    def local_update(self, client: int, r: int, *, gen: torch.Generator | None = None,
                     head: torch.Tensor | None = None, phases: list | None = None,
                     data: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Train ``client`` from the server's shared part and its own private part; keep the private
        part, return the change of the shared part (its delta). The keyword arguments continue a
        local update whose first phases already ran (with that generator, giving that head)."""
        set_flat(self.model, self.rule.shared, self.shared)
        set_flat(self.model, self.rule.private, self.private[client] if head is None else head)
        x, y = data if data is not None else self.client_data(client)
        gen = gen if gen is not None else client_generator(self.cfg["seed"], r, client)
        phases = phases if phases is not None else self.rule.phases(self.cfg)
        train_phases(self.model, x, y, phases, self.sgd, gen, self.augment)
        self.private[client] = get_flat(self.model, self.rule.private).to(self.device)
        return get_flat(self.model, self.rule.shared).to(self.device) - self.shared

    def attack(self, deltas: torch.Tensor, sampled: list[int], r: int) -> torch.Tensor:
        byz = set(self.byzantine)
        mask = torch.tensor([c in byz for c in sampled], device=deltas.device)
        if not bool(mask.any()):
            return deltas
        fn, keys = attack_mod.ATTACKS[self.cfg["attack.name"]]
        kwargs = {k: self.cfg[f"attack.{k}"] for k in keys}
        gen = client_generator(self.cfg["seed"], r, 0, stream=2)
        out = deltas.clone()
        out[mask] = fn(deltas[mask], deltas[~mask], generator=gen, **kwargs).to(out.dtype)
        return out

    def screen(self, deltas: torch.Tensor, sampled: list[int], record: RoundRecord) -> tuple[list[int], torch.Tensor]:
        """Reject updates that are not finite or not of φ's size; log them, keep the rest."""
        ok = torch.isfinite(deltas).all(dim=1)
        kept = []
        for i, c in enumerate(sampled):
            if bool(ok[i]):
                kept.append(i)
            else:
                entry = {"round": record.round, "client": c, "reason": "update has non-finite values"}
                record.rejected.append(entry)
                self.rejected.append(entry)
                log.warning("round %d: rejected the update of client %d (%s)", record.round, c, entry["reason"])
        return kept, deltas[kept]

    def aggregate(self, deltas: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        name = self.cfg["aggregator.name"]
        x = deltas.to(torch.float64)
        if name == "geometric_median":
            res = agg_mod.geometric_median_result(x, tol=self.cfg["aggregator.tol"],
                                                  max_iter=self.cfg["aggregator.max_iter"],
                                                  eps=self.cfg["aggregator.eps"])
            return res.point, {"gm_iterations": res.iterations, "gm_converged": res.converged}
        rule = agg_mod.AGGREGATORS[name]
        kwargs: dict[str, Any] = {}
        n = x.shape[0]
        if "f" in rule.params:
            kwargs["f"] = min(self.f, rule.largest_f(n))  # rows may have been rejected
        if "m" in rule.params:
            kwargs["m"] = min(self.cfg["aggregator.m"], n) or None
        return rule.fn(x, **kwargs), {}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, r: int) -> dict[str, Any]:
        """Each honest client's test accuracy with its own head (and φ as the rule gives it)."""
        accs, losses = [], []
        shared_rep = self.rule.shared in ("rep", "all")
        set_flat(self.model, self.rule.shared, self.shared)
        feats = None
        if shared_rep:
            self.model.eval()
            feats = compute_features(self.model, self.data.test_x)
        for c in self.honest:
            set_flat(self.model, self.rule.private, self.private[c])
            idx = torch.as_tensor(self.data.test_idx[c], dtype=torch.long, device=self.device)
            y = self.data.test_y[idx]
            if feats is not None:
                acc, loss = evaluate(self.model.head, feats[idx], y)
            else:
                acc, loss = evaluate(self.model, self.data.test_x[idx], y)
            accs.append(acc)
            losses.append(loss)
        a, lo = np.array(accs), np.array(losses)
        out: dict[str, Any] = {"round": r}
        if self.data.task == "classification":
            out.update(honest_acc_mean=float(a.mean()), honest_acc_std=float(a.std()), honest_acc_min=float(a.min()))
        else:
            out.update(honest_acc_mean=None, honest_acc_std=None, honest_acc_min=None)
        out["honest_loss_mean"] = float(lo.mean())
        if self.holdout and feats is not None and self.rule.private == "head" and self.data.task == "classification":
            out["transfer_acc_mean"] = self.transfer_accuracy(r, feats)
        b = linear_representation(self.model)
        if "B_star" in self.data.extras and shared_rep and b is not None:
            out["subspace_distance"] = principal_angle_distance(b.cpu().double().numpy(), self.data.extras["B_star"])
        return out

    @torch.no_grad()
    def transfer_accuracy(self, r: int, test_features: torch.Tensor) -> float:
        """Mean test accuracy of the held-out clients after each fits a fresh head (the initial one)
        on ``transfer.samples`` of its training samples, with the current φ frozen; their test
        samples are scored on ``test_features`` (φ of the pooled test set, already computed)."""
        gens = [client_generator(self.cfg["seed"], r, c, stream=3) for c in self.holdout]
        data = []
        for c, g in zip(self.holdout, gens):
            x, y = self.data.client_train(c)
            keep = torch.randperm(len(y), generator=g)[:self.cfg["transfer.samples"]].to(y.device)
            data.append((x[keep], y[keep]))
        set_flat(self.model, "rep", self.shared)
        fresh = self.initial_private.unsqueeze(0).repeat(len(self.holdout), 1)
        heads = train_heads_together(self.model, data, fresh, self.cfg["transfer.epochs"], self.sgd, gens)
        accs = []
        for c, h in zip(self.holdout, heads):
            set_flat(self.model, "head", h)
            idx = torch.as_tensor(self.data.test_idx[c], dtype=torch.long, device=self.device)
            accs.append(evaluate(self.model.head, test_features[idx], self.data.test_y[idx])[0])
        return float(np.mean(accs))

    # ------------------------------------------------------------------ results and checkpoints
    def results(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        final = {k: last.get(k) for k in ("honest_acc_mean", "honest_acc_std", "honest_acc_min", "honest_loss_mean")}
        if self.holdout:
            final["transfer_acc_mean"] = last.get("transfer_acc_mean")
            final["transfer_clients"] = list(self.holdout)
        if "subspace_distance" in last:
            final["subspace_distance"] = last["subspace_distance"]
        final["byzantine_clients"] = list(self.byzantine)
        if self.data.client_names:
            final["byzantine_client_names"] = [self.data.client_names[i] for i in self.byzantine]
        final["rounds"] = last.get("round", 0)
        rounds = max(self.elapsed["rounds"], 1)
        return {
            "config": self.cfg.nested(),
            "data": self.data.summary(),
            "history": self.history,
            "final": final,
            "rejected_updates": self.rejected,
            "timing": {
                "total_s": round(self.elapsed.get("wall_s", 0.0), 4),
                "per_round_s": round(self.elapsed["train_s"] / rounds, 4),
                "eval_total_s": round(self.elapsed["eval_s"], 4),
                "rounds_timed": self.elapsed["rounds"],
                "device": str(self.device),
                "torch_threads": torch.get_num_threads(),
            },
        }

    def state(self, r: int) -> dict[str, Any]:
        return {"round": r, "shared": self.shared.cpu(), "private": self.private.cpu(),
                "history": self.history, "rejected": self.rejected, "elapsed": dict(self.elapsed)}

    def checkpoint(self, r: int) -> Path:
        assert self.out_dir is not None
        return save_checkpoint(self.out_dir, self.state(r))

    def restore(self, run_dir: str | Path) -> None:
        st = load_checkpoint(run_dir)
        self.shared = st["shared"].to(self.device)
        self.private = st["private"].to(self.device)
        self.history = list(st["history"])
        self.rejected = list(st["rejected"])
        self.elapsed = dict(st["elapsed"])
        self.start_round = int(st["round"]) + 1
