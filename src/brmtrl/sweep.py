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

import json
import logging
import os
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

from .checkpoint import CHECKPOINT, RESUMABLE_KEYS, CheckpointError
from .config import validate
from .sweep_grid import Cell, Grid, expand, load_grid, select
from .sweep_layout import (CELL_FILE, ERROR_LOG, GRID_COPY, LOCK, STATE_FILE, GridError, cell_status, cpu_count,
                           finished, load_json, machine)

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
    _keep_renamed_cells(out, grid.cells)
    for c in grid.cells:
        (out / c.name).mkdir(exist_ok=True)
        write_json(out / c.name / CELL_FILE, {"name": c.name, "grid": c.grid, "overrides": c.overrides})
    return state


def _keep_renamed_cells(out: Path, cells: Sequence[Cell]) -> None:
    """A cell whose name changed but whose experiment did not keeps its folder: a grid axis with one value
    has no place in the cells' names, so giving it a second value renames every cell. The folder with the
    same hash suffix whose ``cell.json`` holds the same overrides (up to the resumable keys) is renamed, so
    its finished run, or its checkpoint, is not run again."""
    def ident(overrides: Any) -> str:
        return json.dumps({k: v for k, v in (overrides or {}).items() if k not in RESUMABLE_KEYS}, sort_keys=True)

    names = {c.name for c in cells}
    for c in cells:
        target = out / c.name
        if target.exists():
            continue
        for folder in sorted(out.glob(f"*-{c.name.rsplit('-', 1)[-1]}")):
            meta = load_json(folder / CELL_FILE) if folder.is_dir() and folder.name not in names else None
            if isinstance(meta, dict) and ident(meta.get("overrides")) == ident(c.overrides):
                folder.rename(target)
                log.info("cell %s is %s, renamed: the grid's varying keys changed", folder.name, c.name)
                break


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
              progress: str = "lines", max_cells: int = 0, command: str = "", ray: str = "",
              gpus: float = 0.0, only: Sequence[str] = ()) -> SweepOutcome:
    """Run every unfinished cell of the grid into ``out`` (see the module docstring) and write the
    summary. ``progress``: ``bar`` (and each cell's bar of rounds with one worker), ``lines`` or
    ``off``; ``max_cells`` > 0 stops after that many cells have run (a debugging aid). ``ray``: the
    address of a Ray cluster that runs the cells as tasks instead of local workers
    (:mod:`brmtrl.sweep_ray`; each asks for ``threads`` CPUs, default 1, and ``gpus`` GPUs). ``only``:
    run just the cells matching these ``KEY=V1,V2`` items (:func:`brmtrl.sweep_grid.select`); the directory
    still records the whole grid, so a later run without ``only`` runs the rest."""
    from .report import write_json
    from .sweep_report import write_report

    if workers < 1:
        raise GridError(f"--workers must be >= 1, got {workers}")
    if progress not in ("bar", "lines", "off"):
        raise ValueError(f"progress must be 'bar', 'lines' or 'off', not {progress!r}")
    if threads < 0:
        raise GridError(f"--threads must be >= 0, got {threads}")
    grid = load_grid(grid_path)
    chosen = select(grid, only) if only else grid.cells
    out = Path(out)
    state = _prepare(grid, out, force, command)
    if gpus < 0 or (gpus and not ray):
        raise GridError(f"--gpus-per-cell is for --ray and must be >= 0, got {gpus:g}")
    threads = threads or (1 if ray else max(1, cpu_count() // workers))
    todo = [c for c in chosen if not finished(out / c.name, c.config)]
    result = SweepOutcome(cells=len(chosen), skipped=len(chosen) - len(todo))
    if max_cells:
        todo = todo[:max_cells]
    bar = _Progress(len(chosen), result.skipped, progress)
    t0 = time.perf_counter()
    try:
        if ray:
            from .sweep_ray import execute_on_ray

            jobs = [(c.name, str((out / c.name).resolve()), _cell_values(c, threads)) for c in todo]
            runs = execute_on_ray(ray, jobs, run_cell, threads=threads, gpus=gpus, force=force)
        else:
            runs = _execute(todo, out, workers, threads, progress == "bar" and workers == 1, force)
        for name, outcome in runs:
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
