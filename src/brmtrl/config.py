"""Run configuration: declared parameter constraints, TOML files and ``KEY=VALUE`` overrides.

Every key a run understands is declared once in :data:`brmtrl.schema.SCHEMA` with its default and its
constraint (in the manner of scikit-learn's ``_param_validation``). The same declarations produce the error a
user reads ("config key 'train.lr' must be a float in the range (0, inf). Got -1 instead.") and the
negative tests that check them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from .constraints import Interval, Named, Options, is_plugin_name
from .errors import ConfigError
from .schema import AGGREGATOR_NAMES, ALGORITHM_NAMES, ATTACK_NAMES, PRE_STEP_NAMES, SCHEMA   # re-exported

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "AGGREGATOR_NAMES",
    "ALGORITHM_NAMES",
    "ATTACK_NAMES",
    "PRE_STEP_NAMES",
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
