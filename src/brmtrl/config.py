"""Run configuration: declared parameter constraints, TOML files and ``KEY=VALUE`` overrides.

Every key a run understands is declared once in :data:`SCHEMA` with its default and its constraint
(in the manner of scikit-learn's ``_param_validation``). The same declarations produce the error a
user reads ("config key 'train.lr' must be a float in the range (0, inf). Got -1 instead.") and the
negative tests that check them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from .constraints import AnyOf, Boolean, Interval, ListOf, Named, Options, Text, is_plugin_name
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "SCHEMA",
    "Config",
    "ConfigError",
    "Interval",
    "Options",
    "PLUGIN_PARAMS",
    "SIMULATION_ONLY",
    "ServerConfig",
    "load_config",
    "parse_override",
    "server_view",
]





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
    "train.local_epochs": (1, POS_INT, "baselines: epochs on the whole model"),
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
    "transfer.fedavg_run": ("", Text(), "transfer.shots: directory of a finished fedavg run on the same dataset and "
                            "model; its global model, fine-tuned on the same samples, is the third baseline"),
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


# --------------------------------------------------------------------------- Config
class Config(Mapping[str, Any]):
    """A validated, fully resolved configuration; read with ``cfg["train.lr"]``."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def nested(self) -> dict[str, Any]:
        """The configuration as nested tables (``{"dataset": {"num_clients": 100}}``)."""
        out: dict[str, Any] = {}
        for key, value in self._values.items():
            node = out
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out

    def replace(self, **changes: Any) -> "Config":
        values = dict(self._values)
        values.update({k.replace("__", "."): v for k, v in changes.items()})
        return validate(values)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


#: prefix of a plugged-in rule's own parameters (``aggregator.params.beta = 0.5``)
PLUGIN_PARAMS = "aggregator.params."


def check_key(key: str, source: str) -> None:
    """A ConfigError naming ``key`` (and a close known key) unless the schema, or a plug-in's params, has it."""
    if key.startswith(PLUGIN_PARAMS) and key[len(PLUGIN_PARAMS):].isidentifier():
        return
    if key not in SCHEMA:
        close = [k for k in SCHEMA if k.split(".")[-1] == key.split(".")[-1]]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r} in {source}{hint}; see `brmtrl keys` for the allowed keys")


def validate(values: Mapping[str, Any], source: str = "config") -> Config:
    """Fill defaults, check every value against its declared constraint and the cross-key rules."""
    resolved: dict[str, Any] = {}
    for key in values:
        check_key(key, source)
    for key, (default, constraint, _help) in SCHEMA.items():
        value = values.get(key, default)
        try:
            resolved[key] = constraint.check(value)
        except TypeError:
            raise ConfigError(
                f"config key {key!r} must be {constraint.describe()}. Got {value!r} instead."
            ) from None
    for key in sorted(k for k in values if k.startswith(PLUGIN_PARAMS)):
        value = values[key]
        if not isinstance(value, (bool, int, float, str, list)):
            raise ConfigError(f"config key {key!r} must be a number, a string, a boolean or a list. Got {value!r} "
                              "instead.")
        resolved[key] = value
    _cross_checks(resolved)
    if resolved["aggregator.name"] == "auto":
        resolved["aggregator.name"] = "geometric_median" if resolved["algorithm.name"] == "brmtrl" else "mean"
    return Config(resolved)


def _check_plugins(c: dict[str, Any]) -> None:
    """Plugged-in rules, pre-aggregation steps, attacks and local update rules must import and fit, and
    ``aggregator.params.*`` must be parameters of the plugged-in rule or steps (one line naming the key
    otherwise)."""
    extra = sorted(k for k in c if k.startswith(PLUGIN_PARAMS))
    takes: set[str] = set()
    plugged = []
    if is_plugin_name(c["aggregator.name"]):
        from .aggregators import resolve_rule

        takes |= set(_plugin(c, "aggregator.name", c["aggregator.name"], resolve_rule).params)
        plugged.append(c["aggregator.name"])
    for name in c["aggregator.pre"]:
        if is_plugin_name(name):
            from .aggregators import resolve_pre_step

            takes |= set(_plugin(c, "aggregator.pre", name, resolve_pre_step).params)
            plugged.append(name)
    for key in extra:
        if not plugged:
            raise ConfigError(f"config key {key!r} is for a plugged-in aggregator or pre-aggregation step "
                              f"('package.module:function'); aggregator.name is {c['aggregator.name']!r} and "
                              f"aggregator.pre is {c['aggregator.pre']!r}")
        if key[len(PLUGIN_PARAMS):] not in takes:
            who = f"{' and '.join(map(repr, plugged))} take" if len(plugged) > 1 else f"{plugged[0]!r} takes"
            raise ConfigError(f"config key {key!r}: {who} no parameter {key[len(PLUGIN_PARAMS):]!r} "
                              f"(it takes {', '.join(map(repr, sorted(takes))) or 'none'})")
    if is_plugin_name(c["attack.name"]):
        from .attacks import resolve_attack

        _plugin(c, "attack.name", c["attack.name"], resolve_attack)
    if is_plugin_name(c["algorithm.name"]):
        from .local_rules import resolve_local_rule

        _plugin(c, "algorithm.name", c["algorithm.name"], resolve_local_rule)


def _plugin(c: Mapping[str, Any], key: str, name: str, resolve: Any) -> Any:
    """``resolve(name)``, its failure a one-line :class:`ConfigError` naming ``key``."""
    try:
        return resolve(name)
    except ValueError as exc:
        raise ConfigError(f"config key {key!r} = {name!r}: {exc}") from None


def _cross_checks(c: dict[str, Any]) -> None:
    _check_plugins(c)
    if c["dataset.partition"] == "natural" and c["dataset.name"] != "femnist":
        raise ConfigError(
            "config key 'dataset.partition' = 'natural' needs a dataset with natural clients "
            f"(femnist); dataset.name is {c['dataset.name']!r}"
        )
    if c["dataset.partition"] == "fedrep" and c["dataset.name"] != "femnist":
        raise ConfigError("config key 'dataset.partition' = 'fedrep' is FedRep's FEMNIST protocol (letters a-j, "
                          f"log-normal sample counts); dataset.name is {c['dataset.name']!r}")
    if c["dataset.name"] == "synthetic_linear" and c["attack.name"] == "label_flip":
        raise ConfigError("config key 'attack.name' = 'label_flip' needs a classification dataset; "
                          "synthetic_linear is a regression task")
    if c["dataset.name"].startswith("synthetic") and c["dataset.rank"] > c["dataset.dim"]:
        raise ConfigError(f"config key 'dataset.rank' must be <= dataset.dim ({c['dataset.dim']}). "
                          f"Got {c['dataset.rank']} instead.")
    if c["algorithm.name"] in ("brmtrl", "fedrep") and c["train.head_epochs"] + c["train.rep_epochs"] == 0:
        raise ConfigError("config keys 'train.head_epochs' and 'train.rep_epochs' are both 0: nothing would be trained")
    if c["attack.tailored"] and c["attack.name"] not in ("min_max", "min_sum"):
        raise ConfigError("config key 'attack.tailored' = true applies to attack.name = 'min_max' or 'min_sum' "
                          f"only, not {c['attack.name']!r} (opt_alie and opt_ipm are always tailored)")
    if c["guard.name"] != "none":
        from .local_rules import resolve_local_rule

        if resolve_local_rule(c["algorithm.name"]).shared != "rep":
            raise ConfigError(f"config key 'guard.name' = {c['guard.name']!r} needs an algorithm that shares φ and keeps "
                              f"the head private (brmtrl, fedrep, fedper); algorithm.name is {c['algorithm.name']!r}")
    if c["aggregator.centre"] == "previous" and c["aggregator.name"] != "centered_clipping":
        raise ConfigError("config key 'aggregator.centre' = 'previous' applies to aggregator.name = "
                          f"'centered_clipping' only, not {c['aggregator.name']!r}")
    if c["transfer.clients"] >= c["dataset.num_clients"]:
        raise ConfigError(f"config key 'transfer.clients' must be < dataset.num_clients ({c['dataset.num_clients']}). "
                          f"Got {c['transfer.clients']} instead.")
    if c["transfer.shots"] and not c["transfer.clients"]:
        raise ConfigError(f"config key 'transfer.shots' = {c['transfer.shots']} needs held-out clients; "
                          "set transfer.clients > 0")
    model, data = c["model.name"], c["dataset.name"]
    if model == "cnn_cifar" and data != "cifar10":
        raise ConfigError(f"config key 'model.name' = 'cnn_cifar' needs dataset.name = 'cifar10', not {data!r}")
    if model == "cnn_femnist" and data != "femnist":
        raise ConfigError(f"config key 'model.name' = 'cnn_femnist' needs dataset.name = 'femnist', not {data!r}")


# --------------------------------------------------------------------------- the server's view
#: key prefixes only a simulation knows: the simulated adversary's settings. The server side never reads
#: them (a real federation has no attack config); :func:`server_view` leaves them out.
SIMULATION_ONLY = ("attack.",)


class ServerConfig(Config):
    """The settings the server side may read: a :class:`Config` without the simulated adversary's keys.
    Reading one of those is a programming error, reported by name."""

    def __getitem__(self, key: str) -> Any:
        if key.startswith(SIMULATION_ONLY):
            raise KeyError(f"{key!r} is the simulated adversary's setting; the server side never reads it "
                           "(declare the server's assumption with aggregator.byzantine_fraction or aggregator.f)")
        return super().__getitem__(key)


def server_view(cfg: Mapping[str, Any]) -> ServerConfig:
    """``cfg`` as the server sees it: every key but ``attack.*`` (:data:`SIMULATION_ONLY`)."""
    return ServerConfig({k: v for k, v in cfg.items() if not k.startswith(SIMULATION_ONLY)})


# --------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.05"`` -> ``("train.lr", 0.05)``; values are read as TOML, else as plain strings
    (always as strings for string-valued keys, so that ``attack.name=inf`` names the attack)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE (for example train.rounds=5)")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key; it must look like KEY=VALUE")
    if key in SCHEMA and isinstance(SCHEMA[key][1], (Options, Named)):
        return key, raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "\"'" else raw  # attack.name=inf
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Config:
    """Read a TOML file (optional), apply overrides (``KEY=VALUE`` strings as ``--set`` reads them, or a
    mapping of dotted keys to Python values), validate."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            with p.open("rb") as fh:
                table = tomllib.load(fh)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
        values = _flatten(table)
        for key in values:
            check_key(key, repr(str(p)))
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            check_key(key, "the overrides")
            values[key] = value
    else:
        for text in overrides:
            key, value = parse_override(text)
            check_key(key, f"--set {text!r}")
            values[key] = value
    return validate(values, source=repr(str(path)) if path else "config")
