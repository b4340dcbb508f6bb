"""The layout of a sweep directory: the names of its files, a cell's status read off its folder, and
where a sweep runs. The runner (:mod:`brmtrl.sweep`) and the report (:mod:`brmtrl.sweep_report`) both
read it; neither imports the other's internals."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import CHECKPOINT, same_experiment
from .config import _flatten
from .errors import GridError
from .storage import load_json

__all__ = ["CELL_FILE", "ERROR_LOG", "GRID_COPY", "LOCK", "RESULTS", "STATE_FILE", "GridError", "cell_status",
           "cpu_count", "finished", "load_json", "machine"]

GRID_COPY = "grid.toml"
STATE_FILE = "sweep.json"
CELL_FILE = "cell.json"
ERROR_LOG = "error.log"
LOCK = ".lock"
RESULTS = "results.json"




def finished(cell_dir: Path, cfg: Mapping[str, Any]) -> bool:
    """Whether ``cell_dir/results.json`` is a complete run of ``cfg`` (all its rounds, same experiment)."""
    res = load_json(cell_dir / RESULTS)
    if not isinstance(res, dict) or not isinstance(res.get("config"), dict) or not isinstance(res.get("final"), dict):
        return False
    return res["final"].get("rounds") == cfg["train.rounds"] and \
        same_experiment(_flatten(res["config"]), cfg)


def cell_status(cell_dir: Path, cfg: Mapping[str, Any] | None = None) -> str:
    """``done`` (complete results), ``error`` (the last attempt failed), ``partial`` (a checkpoint to
    continue from) or ``missing``. Without ``cfg``, a results.json counts when all its rounds are done
    (and are the ``train.rounds`` of the cell's ``cell.json`` overrides, when they set it)."""
    if cfg is not None and finished(cell_dir, cfg):
        return "done"
    if cfg is None:
        res = load_json(cell_dir / RESULTS)
        rounds = (res or {}).get("config", {}).get("train", {}).get("rounds") if isinstance(res, dict) else None
        wanted = ((load_json(cell_dir / CELL_FILE) or {}).get("overrides") or {}).get("train.rounds", rounds)
        if isinstance(res, dict) and rounds is not None and (res.get("final") or {}).get("rounds") == rounds == wanted:
            return "done"
    if (cell_dir / ERROR_LOG).is_file():
        return "error"
    if (cell_dir / CHECKPOINT).is_file():
        return "partial"
    return "missing"


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """Where a sweep ran: platform, CPU cores, torch's version."""
    import torch

    return {"platform": platform.platform(), "cpus": cpu_count(), "torch": torch.__version__}
