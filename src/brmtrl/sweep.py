"""Sweeps: many runs from one grid file, resumable, in parallel (``brmtrl sweep``).

A grid file is TOML::

    config = "../quick.toml"            # the base configuration, relative to the grid file
    [set]                               # fixed overrides of every cell (dotted keys, as --set)
    train.rounds = 10
    [grid]                              # lists: the sweep is the Cartesian product of them
    "aggregator.name" = ["mean", "geometric_median"]
    "attack.name" = ["sign_flip", "gaussian"]
    seed = [0, 1]
    [[exclude]]                         # optional: cells matching every key of one table are skipped
    "aggregator.name" = "mean"          # (a list value matches any of its items)
    "attack.name" = "gaussian"

A grid key that is not a config key is a *variant axis*: its values name tables of overrides given
under ``[variants.<axis>]``, for settings that go together (a rule and its pre-aggregation steps)::

    [grid]
    defense = ["geometric_median", "nnm_gm"]
    [variants.defense]
    geometric_median = { "aggregator.name" = "geometric_median" }
    nnm_gm = { "aggregator.name" = "geometric_median", "aggregator.pre" = ["nnm"] }

Each cell runs in ``DIR/<name>/`` through the same code as ``brmtrl run``
(:func:`brmtrl.rundir.run_builtin`); its name joins the values of the keys that vary with a short hash of
its overrides. Finished cells are skipped when the sweep is started again, unfinished ones continue
from their checkpoints; ``DIR/sweep.json`` records the grid's cells and the fingerprint of their
configurations, so a directory of another grid is refused (unless ``force``). The summary files and
plots are written by :mod:`brmtrl.sweep_report`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT, RESUMABLE_KEYS, CheckpointError, config_fingerprint
from .config import Config, ConfigError, _check_key, _flatten, server_view, validate
from .sweep_layout import (CELL_FILE, ERROR_LOG, GRID_COPY, LOCK, STATE_FILE, GridError, cell_status, cpu_count,
                           finished, load_json, machine)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "CELL_FILE",
    "ERROR_LOG",
    "GRID_COPY",
    "STATE_FILE",
    "Cell",
    "Grid",
    "GridError",
    "SweepOutcome",
    "cell_status",
    "expand",
    "load_grid",
    "run_cell",
    "run_sweep",
]

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

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.grid.items()) or "the only cell"


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
        _check_key(key, where)
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
    from .federation import byzantine_clients, num_sampled
    from .server import Aggregation

    training = list(range(cfg["dataset.num_clients"] - cfg["transfer.clients"]))
    byz = byzantine_clients(cfg, training)
    if len(byz) >= len(training):
        raise ConfigError(f"config key 'attack.byzantine_fraction' = {cfg['attack.byzantine_fraction']} makes every "
                          "training client Byzantine")
    Aggregation.from_config(server_view(cfg), num_sampled(cfg, len(training)), len(training))


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


# --------------------------------------------------------------------------- one cell
@contextmanager
def _cell_lock(folder: Path) -> Iterator[bool]:
    """An exclusive lock on ``folder/.lock`` (POSIX); yields False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_cell(cell_dir: str, values: dict[str, Any], progress: bool, restart_on_mismatch: bool) -> dict[str, Any]:
    """Run (or continue) one cell in this process; never raises for a failing run: the outcome says
    ``status`` (``done`` / ``error``), ``error`` (one line) and ``wall_s``; the traceback goes to
    ``cell_dir/error.log``. A worker process of the sweep calls this. A cell that another process is
    running (a sweep started twice on one DIR) is an error of this attempt, left to the other."""
    folder = Path(cell_dir)
    t0 = time.perf_counter()
    with _cell_lock(folder) as mine:
        if not mine:
            return {"status": "error", "error": "another process is running this cell (is the sweep running twice?)",
                    "wall_s": 0.0}
        return _run_locked(folder, values, progress, restart_on_mismatch, t0)


def _run_locked(folder: Path, values: dict[str, Any], progress: bool, restart_on_mismatch: bool,
                t0: float) -> dict[str, Any]:
    from .rundir import run_builtin

    try:
        cfg = validate(values)
        resume = (folder / CHECKPOINT).is_file()
        try:
            run_builtin(cfg, folder, progress=progress, resume=resume)
        except CheckpointError:
            if not (resume and restart_on_mismatch):
                raise
            (folder / CHECKPOINT).unlink()
            run_builtin(cfg, folder, progress=progress, resume=False)
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded and the sweep goes on
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"status": "error", "error": f"{type(exc).__name__}: {line}", "wall_s": time.perf_counter() - t0}
    (folder / ERROR_LOG).unlink(missing_ok=True)
    return {"status": "done", "error": "", "wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- the sweep directory
def _prepare(grid: Grid, out: Path, force: bool, command: str) -> dict[str, Any]:
    """Create ``out``; refuse one made from another grid unless ``force``; write the grid's copy, the
    state file and each cell's ``cell.json``. Returns the state."""
    state_path = out / STATE_FILE
    old = load_json(state_path) if state_path.exists() else None
    if state_path.exists() and not isinstance(old, dict):
        raise GridError(f"{str(state_path)!r} is damaged; use another --out DIR or --force")
    if old is None and out.is_dir() and any(out.iterdir()) and not force:
        raise GridError(f"--out {str(out)!r} exists and is not a sweep directory; use another DIR or --force")
    if isinstance(old, dict) and old.get("fingerprint") != grid.fingerprint() and not force:
        raise GridError(f"--out {str(out)!r} holds a sweep of a different grid ({old.get('grid_file')!r}); "
                        "use another --out DIR, or --force to reuse it (changed cells start again)")
    from .report import write_json

    out.mkdir(parents=True, exist_ok=True)
    (out / GRID_COPY).write_text(grid.text, encoding="utf-8")
    state = {
        "grid_file": str(grid.path), "base_config": str(grid.base), "fingerprint": grid.fingerprint(),
        "keys": grid.keys, "set": grid.fixed, "exclude": grid.exclude,
        "cells": [{"name": c.name, "grid": c.grid} for c in grid.cells],
        "command": command, "wall_s": float((old or {}).get("wall_s", 0.0)), "machine": machine(),
    }
    write_json(state_path, state)
    for c in grid.cells:
        (out / c.name).mkdir(exist_ok=True)
        write_json(out / c.name / CELL_FILE, {"name": c.name, "grid": c.grid, "overrides": c.overrides})
    return state


def _cell_values(cell: Cell, threads: int) -> dict[str, Any]:
    """The cell's configuration as a plain dict, with ``threads`` unless the grid sets it."""
    values = dict(cell.config)
    if "threads" not in cell.overrides:
        values["threads"] = threads
    return values


def spread_device(values: dict[str, Any], position: int, gpus: int) -> dict[str, Any]:
    """With several visible GPUs, cells run by parallel workers go round-robin over them (``cuda:k`` for
    the cell at ``position``) instead of all on ``cuda:0``; a cell whose ``device`` names a device or
    the CPU keeps it. ``device`` does not change what a cell computes (it is not in the fingerprint)."""
    if gpus > 1 and values.get("device", "auto") in ("auto", "cuda"):
        return {**values, "device": f"cuda:{position % gpus}"}
    return values


@dataclass
class SweepOutcome:
    cells: int
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    pending: int = 0
    wall_s: float = 0.0


class _Progress:
    """How finished cells are shown: ``bar`` (one bar over the cells, with an ETA), ``lines`` (a line
    per cell) or ``off``."""

    def __init__(self, total: int, initial: int, mode: str):
        self.count = initial
        self.total = total
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="cells", unit="cell", dynamic_ncols=True)

    def finished(self, name: str, outcome: Mapping[str, Any]) -> None:
        self.count += 1
        what = "done" if outcome["status"] == "done" else f"FAILED: {outcome['error']}"
        line = f"[{self.count}/{self.total}] {name}: {what} ({outcome['wall_s']:.1f} s)"
        if self.bar is not None:
            if outcome["status"] != "done":
                self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        elif self.mode == "lines":
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(grid_path: str | Path, out: str | Path, *, workers: int = 1, threads: int = 0, force: bool = False,
              progress: str = "lines", max_cells: int = 0, command: str = "") -> SweepOutcome:
    """Run every unfinished cell of the grid into ``out`` (see the module docstring) and write the
    summary. ``progress``: ``bar`` (and each cell's bar of rounds with one worker), ``lines`` or
    ``off``; ``max_cells`` > 0 stops after that many cells have run (a debugging aid)."""
    from .report import write_json
    from .sweep_report import write_report

    if workers < 1:
        raise GridError(f"--workers must be >= 1, got {workers}")
    if progress not in ("bar", "lines", "off"):
        raise ValueError(f"progress must be 'bar', 'lines' or 'off', not {progress!r}")
    if threads < 0:
        raise GridError(f"--threads must be >= 0, got {threads}")
    grid = load_grid(grid_path)
    out = Path(out)
    state = _prepare(grid, out, force, command)
    threads = threads or max(1, cpu_count() // workers)
    todo = [c for c in grid.cells if not finished(out / c.name, c.config)]
    result = SweepOutcome(cells=len(grid.cells), skipped=len(grid.cells) - len(todo))
    if max_cells:
        todo = todo[:max_cells]
    bar = _Progress(len(grid.cells), result.skipped, progress)
    t0 = time.perf_counter()
    try:
        for name, outcome in _execute(todo, out, workers, threads, progress == "bar" and workers == 1, force):
            bar.finished(name, outcome)
            if outcome["status"] == "done":
                result.done += 1
            else:
                result.failed.append((name, outcome["error"]))
    finally:
        bar.close()
        result.wall_s = time.perf_counter() - t0
        state["wall_s"] = float(state["wall_s"]) + result.wall_s
        write_json(out / STATE_FILE, state)
        write_report(out)
    result.pending = result.cells - result.skipped - result.done - len(result.failed)
    return result


def _watch_parent(parent: int) -> None:
    """In a worker: exit when the sweep that started it is gone (killed), so that no orphan keeps
    running cells that a restarted sweep runs too; the cells' checkpoints are written atomically."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="brmtrl-parent-watch", daemon=True).start()


def _execute(cells: Sequence[Cell], out: Path, workers: int, threads: int, cell_bars: bool,
             force: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``cells``: in this process with one worker, else in a pool of spawned processes; yield
    (name, outcome) as each finishes."""
    if workers == 1:
        for c in cells:
            yield c.name, run_cell(str(out / c.name), _cell_values(c, threads), cell_bars, force)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, max(1, len(cells))), mp_context=get_context("spawn"),
                               initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        futures: dict[Future[dict[str, Any]], str] = {
            pool.submit(run_cell, str(out / c.name), spread_device(_cell_values(c, threads), i, gpus), False,
                        force): c.name for i, c in enumerate(cells)}
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                outcome = {"status": "error", "error": f"worker died: {type(exc).__name__}: {exc}", "wall_s": 0.0}
            yield futures[fut], outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
