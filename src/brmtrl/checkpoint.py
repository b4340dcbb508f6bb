"""Checkpoints: the whole state of a run at the end of a round, written atomically.

The file is written to a temporary name in the run directory, flushed to disk and renamed over
``checkpoint.pt``, so a run killed at any instant leaves either the previous checkpoint or the new
one, never half of one.

What a checkpoint holds: the round, φ (the server's shared vector), every client's private vector
(its head), the history and rejected updates so far, and the elapsed time. No RNG state is needed:
every random draw of round r comes from generators seeded by (seed, r, client), and the local
optimizers are created afresh in every local update (as in FedRep), so there is no optimizer state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .data import DataError

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint"]

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise DataError(f"no checkpoint in {str(run_dir)!r}: {CHECKPOINT} is missing "
                        "(the run stopped before its first checkpoint; start it again)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    for key in ("round", "shared", "private", "history"):
        if key not in state:
            raise DataError(f"checkpoint {str(path)!r} lacks {key!r}; it was not written by brmtrl")
    return state
