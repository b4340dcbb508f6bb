"""The settings schema: every key a run understands, with its default, its declared constraint and its help.

Declared once here (in the manner of scikit-learn's ``_param_validation``) and checked by
:mod:`brmtrl.config`, which also reads TOML files and overrides. Kept literal, with no torch import, so that
reading a config stays cheap.
"""

from __future__ import annotations

from typing import Any

from .constraints import AnyOf, Boolean, Interval, ListOf, Named, Options, Text

__all__ = ["AGGREGATOR_NAMES", "ALGORITHM_NAMES", "ATTACK_NAMES", "DATASETS", "MODELS", "PRE_STEP_NAMES", "SCHEMA"]

# --------------------------------------------------------------------------- the schema
DATASETS = ("synthetic_classification", "synthetic_linear", "cifar10", "femnist")
MODELS = ("auto", "cnn_cifar", "cnn_femnist", "mlp", "linear")
ALGORITHM_NAMES = ("brmtrl", "fedrep", "fedavg", "fedavg_ft", "fedper", "lg_fedavg", "local")
# the names in the registries brmtrl.aggregators.AGGREGATORS and PRE_STEPS (kept literal so that reading a config
# does not import torch; tests/test_defenses.py checks they match the registries)
AGGREGATOR_NAMES = ("auto", "mean", "geometric_median", "krum", "multi_krum", "bulyan", "median", "trimmed_mean",
                    "centered_clipping")
PRE_STEP_NAMES = ("nnm", "bucketing", "arc")
# the names in the registry brmtrl.attacks.ATTACKS (literal for the same reason)
ATTACK_NAMES = ("none", "gaussian", "gaussian_additive", "sign_flip", "label_flip", "random", "nan", "inf", "alie",
                "ipm", "min_max", "min_sum", "mimic", "fang", "opt_alie", "opt_ipm")

POS_INT = Interval(int, 1, None)
NONNEG_INT = Interval(int, 0, None)
POS_FLOAT = Interval(float, 0, None, "neither")
NONNEG_FLOAT = Interval(float, 0, None, "left")

#: key -> (default, constraint, help)
SCHEMA: dict[str, tuple[Any, Any, str]] = {
    "seed": (0, NONNEG_INT, "seed for data, partition, model, sampling and attacks"),
    "device": ("auto", Text(r"auto|cpu|cuda|cuda:\d+|mps", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", False),
               "torch device; 'auto' takes CUDA when present"),
    "threads": (0, NONNEG_INT, "CPU threads for torch; 0 keeps torch's default (all cores). "
                "Use 1 for small models or when several runs share a machine"),
    # data
    "dataset.name": ("synthetic_classification", Options(DATASETS), "dataset"),
    "dataset.root": ("", Text(), "local copy of the data; empty means the online source"),
    "dataset.num_clients": (100, POS_INT, "number of clients (FEMNIST: first N writers)"),
    "dataset.partition": ("pathological", Options(("pathological", "dirichlet", "natural", "iid", "fedrep")),
                          "how samples are split among clients ('natural': FEMNIST writers; 'fedrep': FedRep's "
                          "FEMNIST protocol, letters a-j relabelled 0-9, log-normal sample counts)"),
    "dataset.classes_per_client": (2, POS_INT, "pathological and fedrep partitions: classes per client"),
    "dataset.dirichlet_alpha": (0.5, POS_FLOAT, "Dirichlet partition concentration"),
    "dataset.lognormal_sigma": (1.0, POS_FLOAT, "femnist partition 'fedrep': σ of the log-normal sample-count weights"),
    "dataset.augment": (False, Boolean(), "random crop + horizontal flip on training batches (images)"),
    "dataset.samples_per_client": (100, POS_INT, "synthetic: training samples per client"),
    "dataset.test_samples_per_client": (200, POS_INT, "synthetic: test samples per client"),
    "dataset.dim": (50, POS_INT, "synthetic: input dimension d"),
    "dataset.rank": (4, POS_INT, "synthetic: rank k of the shared representation B*"),
    "dataset.num_classes": (5, Interval(int, 2, None), "synthetic classification: classes"),
    "dataset.noise": (0.1, NONNEG_FLOAT, "synthetic: label / target noise"),
    "dataset.test_fraction": (0.1, Interval(float, 0, 1, "neither"),
                              "FEMNIST from the hub: held-out fraction per writer"),
    # model
    "model.name": ("auto", Options(MODELS), "model; 'auto' picks the dataset's default"),
    "model.hidden": (64, POS_INT, "MLP hidden width"),
    "model.memory_format": ("auto", Options(("auto", "channels_last", "contiguous")),
                            "layout of image batches and conv weights; 'auto' = channels_last for CNNs"),
    "model.rep_dim": (0, NONNEG_INT, "width of φ's output; 0 means the dataset's rank or the model default"),
    # algorithm
    "algorithm.name": ("brmtrl", Named(ALGORITHM_NAMES), "local update rule (or 'package.module:name', docs/extending.md)"),
    "algorithm.lg_shared_layers": (2, POS_INT, "lg_fedavg: top layers shared (head included); 2 = fc2 and fc3 of "
                                   "the CIFAR-10 CNN, as FedRep's code shares them"),
    # training
    "train.rounds": (50, POS_INT, "communication rounds"),
    "train.participation": (0.1, Interval(float, 0, 1, "right"), "fraction of clients sampled per round"),
    "train.head_epochs": (10, NONNEG_INT, "brmtrl: epochs on the head with φ frozen"),
    "train.rep_epochs": (1, NONNEG_INT, "brmtrl: epochs on φ with the head frozen"),
    "train.local_epochs": ("auto", AnyOf((POS_INT, Options(("auto",)))), "methods that train their whole model: epochs "
                           "per round; 'auto' = train.head_epochs + train.rep_epochs, BR-MTRL's budget (FedRep's local_ep)"),
    "train.lr": (0.01, POS_FLOAT, "SGD learning rate"),
    "train.momentum": (0.5, Interval(float, 0, 1, "left"), "SGD momentum"),
    "train.weight_decay": (1e-4, NONNEG_FLOAT, "SGD weight decay"),
    "train.batch_size": (10, POS_INT, "mini-batch size"),
    "train.eval_every": (1, POS_INT, "evaluate every k rounds (and after the last)"),
    "train.checkpoint_every": (10, NONNEG_INT, "checkpoint every k rounds; 0 disables"),
    # aggregation
    "aggregator.name": ("auto", Named(AGGREGATOR_NAMES), "rule combining the clients' updates; 'auto' = "
                        "geometric_median for brmtrl, mean for every other algorithm (fedrep is FedRep: the mean)"),
    "aggregator.byzantine_fraction": (0.2, Interval(float, 0, 1, "left"),
                                      "the server's declared assumption: the fraction of the client population that "
                                      "may be Byzantine (never read from attack.*: a real federation has no attack "
                                      "config); aggregator.f = 'auto' turns it into a per-round f"),
    "aggregator.f": ("auto", AnyOf((NONNEG_INT, Options(("auto",)))),
                     "Byzantine rows assumed per round (krum, multi_krum, bulyan, trimmed_mean, nnm); 'auto' = the "
                     "aggregator.f_quantile quantile of the Byzantine count among the sampled when "
                     "aggregator.byzantine_fraction of the population is Byzantine"),
    "aggregator.f_quantile": (0.9999, Interval(float, 0, 1, "neither"),
                              "aggregator.f = 'auto': the quantile of the per-round Byzantine count taken as f; a "
                              "round with more Byzantine updates than f can wreck f-based rules (nnm, krum, "
                              "trimmed_mean), so the default leaves about 1 round in 10,000 above it"),
    "aggregator.m": (0, NONNEG_INT, "multi_krum: rows averaged; 0 means n - f"),
    "aggregator.tol": (1e-8, POS_FLOAT, "geometric_median: relative tolerance"),
    "aggregator.max_iter": (1000, POS_INT, "geometric_median: iteration cap"),
    "aggregator.eps": (1e-8, POS_FLOAT, "geometric_median: smoothing ν of the Weiszfeld weights"),
    "aggregator.pre": ([], ListOf(Named(PRE_STEP_NAMES)),
                       "pre-aggregation steps run in order before the rule, e.g. [\"nnm\", \"bucketing\"]: 'nnm' "
                       "replaces each update by the mean of its n - f nearest, 'bucketing' averages random buckets "
                       "of aggregator.bucket_size updates"),
    "aggregator.bucket_size": (2, POS_INT, "bucketing: updates per bucket (the last bucket may be smaller)"),
    "aggregator.tau": (0.0, NONNEG_FLOAT, "centered_clipping: clipping radius τ; 0 = automatic, the median distance "
                       "of the updates to the start point (their coordinate-wise median)"),
    "aggregator.iters": (3, POS_INT, "centered_clipping: clipping iterations"),
    "aggregator.centre": ("median", Options(("median", "previous")),
                          "centered_clipping: where clipping starts each round, the coordinate-wise median of the "
                          "round's updates (stateless) or the previous round's aggregate (the paper's history)"),
    "aggregator.max_norm": (0.0, NONNEG_FLOAT, "reject updates whose L2 norm exceeds this (0: no limit; "
                            "non-finite values and overflowing norms are always rejected)"),
    "aggregator.max_norm_ratio": (1e6, NONNEG_FLOAT, "reject updates whose L2 norm exceeds this many times the "
                                  "median norm of the round's valid updates (absurd norms; 0: no limit)"),
    # the server's reputation across rounds (docs/robustness.md; brmtrl.reputation)
    "reputation.name": ("none", Options(("none", "flags")), "server-side reputation: 'flags' excludes a client flagged "
                        "in reputation.threshold of its last reputation.window rounds; 'none' is the paper's method"),
    "reputation.window": (10, POS_INT, "reputation: participations a client is judged on (its latest ones)"),
    "reputation.min_rounds": (3, POS_INT, "reputation: participations before a client can be excluded"),
    "reputation.threshold": (0.8, Interval(float, 0, 1, "right"), "reputation: flagged fraction that excludes a client"),
    # evaluation
    "eval.protocol": ("brmtrl", Options(("brmtrl", "fedrep")),
                      "'brmtrl': unweighted mean over honest clients, each with the head it holds; 'fedrep': "
                      "FedRep's protocol, test-size-weighted mean, each head first refitted on the current φ"),
    # the client-side guard (docs/robustness.md; brmtrl.guard)
    "guard.name": ("none", Options(("none", "ditto")),
                   "client-side guard: 'ditto' keeps a personal model per client (Ditto's proximal φ) and scores the "
                   "better of it and the federated model on the client's validation part; 'none' is the paper's method"),
    "guard.validation": (0.2, Interval(float, 0, 1, "neither"),
                         "guard: fraction of each client's training samples held out for its validation (never trained on)"),
    "guard.lam": (0.1, NONNEG_FLOAT, "guard: Ditto's proximal strength λ pulling the personal φ toward the received φ"),
    "guard.epochs": (1, NONNEG_INT, "guard: epochs on the personal φ per round a client is sampled"),
    # transfer to new clients
    "transfer.clients": (0, NONNEG_INT, "clients held out of training; at each evaluation they fit only a head on φ"),
    "transfer.samples": (10, POS_INT, "training samples a held-out client fits its head on"),
    "transfer.epochs": (100, POS_INT, "epochs a held-out client fits its fresh head for (on cached features, so cheap), "
                        "and, with transfer.shots, that FedAvg's model is fine-tuned for"),
    "transfer.shots": ([], ListOf(Interval(int, 1, None), unique=True),
                       "after training, each held-out client fits on k labelled samples per class of its own "
                       "classes, for each k in the list (e.g. [1, 5, 10, 20]); results.json 'transfer', transfer.png"),
    "transfer.scratch_epochs": (100, POS_INT, "transfer.shots: epochs of the baseline trained from scratch on the k-shot "
                                "samples (the same budget as transfer.epochs by default)"),
    "transfer.fedavg_run": ("", Text(), "transfer.shots: directory of a finished fedavg run on the same data and "
                            "partition (checked by fingerprint); its global model, fine-tuned on the same samples, is the "
                            "third baseline"),
    "transfer.select": ("validation", Options(("validation", "fixed")),
                        "transfer.shots: 'validation' chooses each method's epochs and lr per new client and k on one "
                        "held-out sample per class of its k shots (k >= 2), from transfer.epochs_grid x transfer.lr_grid, "
                        "then refits on all k; 'fixed': transfer.epochs / transfer.scratch_epochs at train.lr"),
    "transfer.epochs_grid": ([10, 30, 100], ListOf(Interval(int, 1, None), min_len=1, unique=True),
                             "transfer.select = 'validation': the epochs tried"),
    "transfer.lr_grid": ([0.01, 0.03, 0.1], ListOf(Interval(float, 0, None, "neither"), min_len=1, unique=True),
                         "transfer.select = 'validation': the learning rates tried"),
    # FedAvg with fine-tuning
    "finetune.epochs": (5, POS_INT, "fedavg_ft (and the FedAvg transfer baseline): epochs each client fine-tunes "
                        "the global model on its training data before it is evaluated"),
    "finetune.part": ("all", Options(("all", "head")), "fedavg_ft: what is fine-tuned, the whole model or its last layer"),
    # the Flower engines (brmtrl run --engine flower, brmtrl deploy-local)
    "flower.min_clients": (1, POS_INT, "Flower: stop the run when fewer clients than this answer in a round"),
    "flower.round_timeout": (600.0, POS_FLOAT, "Flower: seconds to wait for the replies of a round; "
                             "clients that do not answer in time are left out of later rounds"),
    "flower.connect_timeout": (120.0, POS_FLOAT, "Flower: seconds to wait for every client's node to connect"),
    "flower.backend_cpus": (0, NONNEG_INT, "Flower simulation: CPUs Ray may use (0: all)"),
    # attack
    "attack.name": ("none", Named(ATTACK_NAMES), "what Byzantine clients do"),
    "attack.byzantine_fraction": (0.0, Interval(float, 0, 1, "left"), "fraction of clients that are Byzantine"),
    "attack.sigma": (1.0, NONNEG_FLOAT, "gaussian: std of the pure noise sent; gaussian_additive: std of the noise "
                     "added to the honest update"),
    "attack.scale": (5.0, POS_FLOAT, "sign_flip: the update sent is -scale x the honest one"),
    "attack.magnitude": (1000.0, POS_FLOAT, "random: values uniform in [-magnitude, magnitude]"),
    "attack.z": ("auto", AnyOf((Options(("auto",)), POS_FLOAT)),
                 "alie: the update sent is mean - z x std of the honest updates (attack.direction = 'up': + z x std); "
                 "'auto' takes the paper's z_max for the round's n and Byzantine count"),
    "attack.direction": ("down", Options(("down", "up")),
                         "alie: 'down' sends mean - z x std (the paper), 'up' mean + z x std"),
    "attack.epsilon": (0.1, POS_FLOAT, "ipm: the update sent is -epsilon x the honest mean"),
    "attack.perturbation": ("std", Options(("std", "sign", "unit")),
                            "min_max, min_sum: the perturbation direction, -std, -sign(mean) or -mean/|mean|"),
    "attack.sum_bound": ("max", Options(("max", "min")),
                         "min_sum: 'max' bounds the crafted row's sum of squared distances to the honest rows by the "
                         "largest honest row's (the paper's formula); 'min' by the smallest, with gamma capped at 100 "
                         "(the authors' released code)"),
    "attack.fang_target": ("auto", Options(("auto", "krum", "trimmed_mean")),
                           "fang: the rule the attack is crafted for; auto: krum for krum, multi_krum and bulyan, "
                           "trimmed_mean for every other rule"),
    "attack.tailored": (False, Boolean(), "min_max, min_sum: tune gamma against the server's actual rule (the "
                        "AGR-tailored attack of Shejwalkar & Houmansadr) instead of the rule-blind stealth bound"),
    "attack.evals": (20, POS_INT, "opt_alie, opt_ipm, tailored min_max/min_sum: evaluations of the server's rule "
                     "per round in the search of the attack's scale"),
}
