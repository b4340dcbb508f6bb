"""Grid files: reading one, checking every cell's configuration, and the cells of the sweep (their
names, overrides and resolved configurations). :mod:`brmtrl.sweep` runs them; the file format is in its
docstring and the README."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import RESUMABLE_KEYS, config_fingerprint
from .config import Config, ConfigError, _flatten, check_key, server_view, validate
from .sweep_layout import GridError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Cell", "Grid", "cell_name", "expand", "load_grid"]

log = logging.getLogger("brmtrl")

TOP_KEYS = ("config", "set", "grid", "exclude", "variants")


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: ``grid`` holds its values of the grid keys, ``overrides`` those and the
    grid's fixed ``[set]`` values; ``config`` is the resolved configuration."""

    name: str
    grid: dict[str, Any]
    overrides: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Grid:
    """A parsed, validated grid file (:func:`load_grid`)."""

    path: Path
    text: str
    base: Path
    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    exclude: list[dict[str, Any]]
    cells: list[Cell] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return list(self.axes)

    def fingerprint(self) -> str:
        """SHA-256 of the cells' names and configuration fingerprints (:func:`config_fingerprint`,
        which leaves out ``train.rounds``, ``device`` and ``threads``)."""
        items = [[c.name, config_fingerprint(c.config)] for c in self.cells]
        return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- the grid file
def _read_toml(path: Path, what: str) -> tuple[str, dict[str, Any]]:
    if not path.is_file():
        raise GridError(f"{what} {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GridError(f"{what} {str(path)!r} is not valid TOML: {exc}") from None


def _known_keys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    flat = _flatten(table)
    for key in flat:
        check_key(key, where)
    return flat


def _variants(raw: Any, where: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``[variants.<axis>]``: for each variant axis, each variant's name and its overrides."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GridError(f"{where}: variants must be tables [variants.AXIS] of NAME = {{ KEY = value, ... }}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, table in raw.items():
        if "." in axis or not isinstance(table, Mapping) or not table:
            raise GridError(f"{where}: [variants.{axis}] must be a non-empty table of NAME = {{ KEY = value, ... }} "
                            "(an axis name without dots)")
        out[axis] = {}
        for name, overrides in table.items():
            if not isinstance(overrides, Mapping):
                raise GridError(f"{where}: [variants.{axis}] {name!r} must be a table of KEY = value")
            out[axis][name] = _known_keys(overrides, f"{where} [variants.{axis}] {name!r}")
    return out


def _axes(table: Any, where: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, list[Any]]:
    if not isinstance(table, Mapping) or not table:
        raise GridError(f"{where}: [grid] must be a table of KEY = [values, ...] with at least one key")
    variants = variants or {}
    plain = {k: v for k, v in table.items() if k not in variants}
    axes = _known_keys(plain, where + " [grid]")
    for axis in variants:
        if axis not in table:
            raise GridError(f"{where}: [variants.{axis}] is given but {axis!r} is not a [grid] key")
        values = table[axis]
        if not isinstance(values, list) or not values:
            raise GridError(f"{where} [grid]: {axis!r} must be a non-empty list of variant names. Got {values!r} instead.")
        for v in values:
            if v not in variants[axis]:
                raise GridError(f"{where} [grid]: {axis!r} = {v!r} is not a variant of [variants.{axis}] "
                                f"({', '.join(map(repr, variants[axis]))})")
        axes[axis] = values
    ordered: dict[str, list[Any]] = {}
    for k in table:  # the file's order
        ordered.update({a: v for a, v in axes.items() if a == k or (k not in variants and a.startswith(k + "."))})
    axes = ordered
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{where} [grid]: {key!r} must be a non-empty list of values. Got {values!r} instead.")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise GridError(f"{where} [grid]: {key!r} lists a value twice: {values!r}")
    return axes


def _excludes(raw: Any, axes: Mapping[str, list[Any]], where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        raise GridError(f"{where}: exclude must be a list of tables ([[exclude]] KEY = value ...)")
    out = []
    for i, table in enumerate(raw, 1):
        flat = _flatten(table)
        if not flat:
            raise GridError(f"{where}: [[exclude]] #{i} is empty; it would skip every cell")
        for key, value in flat.items():
            if key not in axes:
                raise GridError(f"{where}: [[exclude]] #{i} names {key!r}, which is not a [grid] key "
                                f"({', '.join(axes)})")
            for v in _alternatives(value, axes[key]):
                if v not in axes[key]:
                    raise GridError(f"{where}: [[exclude]] #{i}: {key!r} = {v!r} is not among the grid's values "
                                    f"{axes[key]!r}")
        out.append(flat)
    return out


def _alternatives(value: Any, values: list[Any]) -> list[Any]:
    """An exclude value: one value, or a list of values any of which matches (unless the key's own
    values are lists, as for ``transfer.shots``)."""
    if isinstance(value, list) and not any(isinstance(v, list) for v in values):
        return value
    return [value]


def expand(axes: Mapping[str, list[Any]], exclude: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The Cartesian product of ``axes`` (in key order, the last key varying fastest) without the
    combinations that match every key of one ``exclude`` table."""
    keys = list(axes)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]
    return [c for c in combos if not any(_matches(c, ex, axes) for ex in exclude)]


def _matches(combo: Mapping[str, Any], ex: Mapping[str, Any], axes: Mapping[str, list[Any]]) -> bool:
    return all(combo[k] in _alternatives(v, axes[k]) for k, v in ex.items())


def select(grid: Grid, only: Sequence[str]) -> list[Cell]:
    """The cells of ``grid`` that ``--only`` keeps: each item is ``KEY=V1,V2`` (a grid key and some of its
    values, as the grid file writes them; items of the same key add values); a cell is kept when it takes one
    of the values of every key named. A key that is not a
    grid key, or a value the key does not take, is a :class:`GridError` naming it."""
    wanted: dict[str, list[Any]] = {}
    for item in only:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise GridError(f"--only {item!r}: expected KEY=VALUE[,VALUE...]")
        if key not in grid.axes:
            raise GridError(f"--only {item!r}: {key!r} is not a grid key of {str(grid.path)!r} "
                            f"(its keys: {', '.join(grid.axes)})")
        by_text = {str(v) if not isinstance(v, bool) else str(v).lower(): v for v in grid.axes[key]}
        for text in (t.strip() for t in raw.split(",")):
            if text not in by_text:
                raise GridError(f"--only {item!r}: {key!r} has no value {text!r} in the grid "
                                f"(its values: {', '.join(by_text)})")
            wanted.setdefault(key, []).append(by_text[text])
    return [c for c in grid.cells if all(c.grid[k] in vals for k, vals in wanted.items())]


def _short(key: str, value: Any) -> str:
    leaf = key.split(".")[-1]
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = leaf if value else f"no-{leaf}"
    elif isinstance(value, list):
        text = leaf + "-".join(map(str, value))
    else:
        text = f"{leaf}{value}"
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.") or leaf


def cell_name(grid_values: Mapping[str, Any], varying: Sequence[str], overrides: Mapping[str, Any]) -> str:
    """``<short values of the varying keys>-<6 hex digits>``: readable and stable; the digits hash the
    cell's overrides (without ``train.rounds``, ``device``, ``threads``, so a grid may extend its rounds)."""
    parts = "-".join(_short(k, grid_values[k]) for k in varying)[:100].rstrip("-.") or "cell"
    ident = {k: v for k, v in overrides.items() if k not in RESUMABLE_KEYS}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:6]
    return f"{parts}-{digest}"


@contextmanager
def _quiet_log() -> Iterator[None]:
    """Silence brmtrl's warnings while every cell is checked (each run gives them again)."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_federation(cfg: Config) -> None:
    """The checks a run makes once it knows its clients, done ahead from the config's client count."""
    from .federation import Federation
    from .server import Aggregation

    fed = Federation.from_config(cfg, cfg["dataset.num_clients"])
    if not fed.honest:
        raise ConfigError(f"config key 'attack.byzantine_fraction' = {cfg['attack.byzantine_fraction']} makes every "
                          "training client Byzantine")
    Aggregation.from_config(server_view(cfg), fed.per_round, len(fed.training))


def _resolve(base: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> Config:
    cfg = validate({**base, **overrides}, source=source)
    _check_federation(cfg)
    return cfg


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file and resolve every cell's configuration; any problem is one
    :class:`GridError` naming the file, the cell and the key."""
    path = Path(path)
    where = f"grid {str(path)!r}"
    text, table = _read_toml(path, "grid file")
    unknown = [k for k in table if k not in TOP_KEYS]
    if unknown:
        raise GridError(f"{where}: unknown top-level key {unknown[0]!r}; a grid has {', '.join(TOP_KEYS)}")
    if not isinstance(table.get("config"), str):
        raise GridError(f"{where}: config = \"FILE.toml\" (the base configuration, relative to the grid) is missing")
    base_path = (path.parent / table["config"]).resolve()
    _, base_table = _read_toml(base_path, f"{where}: base config")
    base = _known_keys(base_table, repr(str(base_path)))
    fixed_raw = table.get("set", {})
    if not isinstance(fixed_raw, Mapping):
        raise GridError(f"{where}: set must be a table of KEY = value")
    fixed = _known_keys(fixed_raw, where + " [set]")
    variants = _variants(table.get("variants"), where)
    axes = _axes(table.get("grid"), where, variants)
    both = [k for k in axes if k in fixed]
    if both:
        raise GridError(f"{where}: {both[0]!r} is both in [set] and in [grid]; keep one")
    for axis, named in variants.items():
        for vname, vals in named.items():
            clash = [k for k in vals if k in fixed or k in axes]
            if clash:
                raise GridError(f"{where}: [variants.{axis}] {vname!r} sets {clash[0]!r}, which [set] or [grid] "
                                "sets too; keep one")
    exclude = _excludes(table.get("exclude"), axes, where)
    combos = expand(axes, exclude)
    if not combos:
        raise GridError(f"{where}: [[exclude]] leaves no cell to run")
    varying = [k for k, v in axes.items() if len(v) > 1]
    cells = []
    with _quiet_log():
        for combo in combos:
            overrides = {**fixed, **{k: v for k, v in combo.items() if k not in variants}}
            for axis in variants:
                overrides.update(variants[axis][combo[axis]])
            name = cell_name(combo, varying, overrides)
            try:
                cfg = _resolve(base, overrides, where)
            except ConfigError as exc:
                raise GridError(f"{where}, cell {name} ({', '.join(f'{k}={v!r}' for k, v in combo.items())}): "
                                f"{exc}") from None
            cells.append(Cell(name, dict(combo), overrides, cfg))
    return Grid(path, text, base_path, fixed, axes, exclude, cells)
