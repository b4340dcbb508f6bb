"""Checkpoints and atomic writes of run-directory files.

**Atomic writes.** Every file brmtrl writes into a run directory (``checkpoint.pt``, ``results.json``,
``metrics.csv``, ``config.json``) is written to a temporary file in the same directory, flushed to disk
and renamed over the final name (:func:`atomic_file`), so a run killed at any instant leaves either the
previous file or the new one, never half of one. Temporary names are ``.<name>.<pid>-<random>.tmp``:
unique per process and per write, so concurrent writers never share one. A write that fails removes
its temporary file; a write that is killed cannot, so :func:`remove_stale_temps` removes the temporary
files of writers that are gone (dead processes, or this process's own finished writes). It runs before
every checkpoint, when a run is resumed and after a run's outputs are written.

**What a checkpoint holds.** The round, φ (the server's shared vector), every client's private vector
(its head), the history and rejected updates so far, the elapsed time, and the configuration it was
written for with its fingerprint (:func:`config_fingerprint`). No RNG state is needed: every random draw
of round r comes from generators seeded by (seed, r, client), and the local optimizers are created
afresh in every local update (as in FedRep), so there is no optimizer state.

**Safety.** Checkpoints hold only tensors, numbers, strings, booleans, None, lists and dicts
(:func:`plain`) and are read with ``torch.load(weights_only=True)``: a file that holds anything else (a
pickled object whose ``__reduce__`` would run code, say) is refused with :class:`CheckpointError`
before any of it runs.

**Resuming a different experiment.** The fingerprint is the SHA-256 of the canonical JSON of the
configuration without :data:`RESUMABLE_KEYS`; on restore, a configuration with another fingerprint is an
error naming the keys that differ. ``train.rounds`` may change (a resumed run may be extended), and so
may ``device`` and ``threads``: they say where the run is computed, not what is computed. (A run moved
to another device continues the same experiment; its numbers may differ in the last digits from the
run that never moved, as they do between devices anyway.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .storage import atomic_file, remove_stale_temps, temp_path

__all__ = [
    "CHECKPOINT",
    "RESUMABLE_KEYS",
    "CheckpointError",
    "atomic_file",
    "check_config",
    "check_fits",
    "config_fingerprint",
    "same_experiment",
    "config_identity",
    "load_checkpoint",
    "plain",
    "remove_stale_temps",
    "save_checkpoint",
    "temp_path",
]

log = logging.getLogger("brmtrl")

CHECKPOINT = "checkpoint.pt"

#: Config keys that may differ between a checkpoint and the run resuming it (left out of the fingerprint).
RESUMABLE_KEYS: tuple[str, ...] = ("train.rounds", "device", "threads")

#: What a checkpoint must hold, with the type of each entry.
REQUIRED: dict[str, type | tuple[type, ...]] = {"round": int, "shared": torch.Tensor, "private": torch.Tensor,
                                               "history": list, "rejected": list, "elapsed": dict}


# --------------------------------------------------------------------------- configuration fingerprint
def config_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration as it defines the experiment: every key but :data:`RESUMABLE_KEYS`."""
    return {k: cfg[k] for k in sorted(cfg) if k not in RESUMABLE_KEYS}


def config_fingerprint(cfg: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, no spaces) of :func:`config_identity`."""
    text = json.dumps(config_identity(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def same_experiment(saved: Mapping[str, Any], cfg: Mapping[str, Any]) -> bool:
    """Whether ``saved`` (a flat configuration stored with a checkpoint or a result) is the experiment
    ``cfg`` describes. A key ``saved`` lacks is taken at its declared default: a key added to brmtrl
    after the run was made leaves the run's experiment unchanged while it keeps the old behaviour."""
    from .config import SCHEMA

    filled = {**{k: v[0] for k, v in SCHEMA.items() if k not in saved}, **saved}
    return config_fingerprint(filled) == config_fingerprint(cfg)


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any], limit: int = 6) -> str:
    """``key (checkpoint A, now B)`` for each key whose value differs, in one line."""
    def shown(values: Mapping[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    keys = [k for k in sorted(set(saved) | set(now)) if shown(saved, k) != shown(now, k)]
    parts = [f"{k} (checkpoint {shown(saved, k)}, now {shown(now, k)})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def check_config(state: Mapping[str, Any], cfg: Mapping[str, Any], where: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointError` when ``state`` was written for another experiment than ``cfg``."""
    saved = state.get("fingerprint")
    if saved is None:
        log.warning("%s has no configuration fingerprint (written by an earlier brmtrl); "
                    "it cannot be checked against the configuration", where)
        return
    if saved == config_fingerprint(cfg):
        return
    stored = state.get("config")
    if isinstance(stored, dict) and same_experiment(stored, cfg):
        return
    diff = _differences(stored, config_identity(cfg)) if isinstance(stored, dict) else ""
    raise CheckpointError(
        f"{where} was written for a different configuration: {diff or 'its fingerprint differs'}; "
        f"put config.json back as it was, or start a new run (only {', '.join(RESUMABLE_KEYS)} may "
        "change when resuming)")


def check_fits(name: str, saved: torch.Tensor, expected: torch.Tensor, where: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointError` when a checkpointed tensor's shape is not the model's."""
    if tuple(saved.shape) != tuple(expected.shape):
        raise CheckpointError(f"{where} does not fit the model of this configuration: {name} has shape "
                              f"{tuple(saved.shape)} in the checkpoint but {tuple(expected.shape)} in the model")


# --------------------------------------------------------------------------- save and load
def plain(obj: Any, where: str = "state") -> Any:
    """``obj`` as what ``torch.load(weights_only=True)`` reads back: tensors (on the CPU), ints, floats,
    strings, booleans, None, lists and dicts. NumPy scalars become Python numbers, NumPy arrays tensors
    and tuples lists; anything else is a bug in the caller and raises ``TypeError``."""
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, dict):
        return {plain(k, f"a key of {where}"): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, numbers, strings, "
                    "booleans, None, lists and dicts")


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (made :func:`plain`) atomically to ``run_dir/checkpoint.pt``, after removing the
    temporary files of earlier interrupted writes. An I/O error is a :class:`CheckpointError`; the
    previous checkpoint is then left as it was."""
    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT
    buf = BytesIO()
    torch.save(plain(state), buf)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)
        with atomic_file(final, "wb") as fh:
            fh.write(buf.getbuffer())
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {str(final)!r}: {exc}") from exc
    return final


def _one_line(exc: BaseException) -> str:
    """The gist of an error of ``torch.load`` in one short line."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((s.strip() for s in text.splitlines() if s.strip()), type(exc).__name__)
    line = line.split(" was not an allowed global")[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _read(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only, no code is run."""
    try:
        with warnings.catch_warnings():  # torch warns (on stderr) about pickle protocols it does not expect
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a bad file
        refused = "Weights only load failed" in str(exc)
        why = "it holds more than tensors and plain data, and brmtrl never runs code from a checkpoint" \
            if refused else "it is damaged or not a checkpoint"
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({_one_line(exc)}): {why}; "
                              "was it written by brmtrl?") from None


def load_checkpoint(run_dir: str | Path, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt`` safely (see the module's docstring) and check its structure; with
    ``cfg``, also check it was written for that configuration (:func:`check_config`)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {str(run_dir)!r}: {CHECKPOINT} is missing "
                              "(the run stopped before its first checkpoint; start it again)")
    state = _read(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a brmtrl checkpoint")
    for key, kind in REQUIRED.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}; it was not written by brmtrl")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"checkpoint {str(path)!r}: {key!r} is a {type(state[key]).__name__}; "
                                  "it was not written by brmtrl")
    if cfg is not None:
        check_config(state, cfg, where=f"checkpoint {str(path)!r}")
    return state
