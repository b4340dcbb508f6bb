"""Running a configuration from Python: the one call a notebook or a script needs.

>>> import brmtrl                                                  # doctest: +SKIP
>>> results = brmtrl.run("configs/quick.toml", {"aggregator.name": "my_rules:coordinate_trimmed_mean"})
>>> results["final"]["honest_acc_mean"]                            # doctest: +SKIP

It does what ``brmtrl run`` does (the same engines, the same ``results.json``), without the command line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import Config, ConfigError, check_key, load_config, parse_override, validate
from .rundir import run_builtin, write_config

__all__ = ["run"]

ENGINES = ("builtin", "flower")


def run(config: str | Path | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | Iterable[str] = (), *, out: str | Path | None = None,
        engine: str = "builtin", progress: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run a configuration and return its ``results.json`` dictionary.

    ``config``: a TOML file, a :class:`brmtrl.Config` (or a mapping of dotted keys, checked like a file), or
    None for the defaults. ``overrides``: ``{"train.rounds": 5}`` or ``["train.rounds=5"]`` (what ``--set``
    takes). ``out``: the run directory (results, plots, checkpoints); None writes into a temporary
    directory that is removed afterwards. ``engine``: ``"builtin"`` or ``"flower"`` (Flower's simulation,
    ``pip install 'brmtrl[flower]'``). ``resume``: continue the checkpoint in ``out`` (built-in engine).
    A bad key or value raises :class:`brmtrl.ConfigError` naming it."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(map(repr, ENGINES))}. Got {engine!r} instead.")
    cfg = _config(config, overrides)
    if out is None:
        if resume:
            raise ConfigError("resume=True needs the run directory to continue (out=...)")
        with tempfile.TemporaryDirectory(prefix="brmtrl-") as tmp:
            return _run(cfg, Path(tmp), engine, progress, resume)
    return _run(cfg, Path(out), engine, progress, resume)


def _config(config: str | Path | Mapping[str, Any] | None, overrides: Mapping[str, Any] | Iterable[str]) -> Config:
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, overrides)
    values = dict(config)
    values.update(overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides))
    for key in values:
        check_key(key, "the config passed to brmtrl.run")
    return validate(values, source="the config passed to brmtrl.run")


def _run(cfg: Config, run_dir: Path, engine: str, progress: bool, resume: bool) -> dict[str, Any]:
    if engine == "flower":
        if resume:
            raise ConfigError("resume works with the built-in engine only; Flower runs start afresh")
        from .flower.simulation import run_flower_simulation

        write_config(run_dir, cfg)
        return run_flower_simulation(cfg, run_dir, progress=progress)
    return run_builtin(cfg, run_dir, progress=progress, resume=resume)
