"""Helpers the experiment scripts share (formatting, reading results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from brmtrl.storage import load_json as _read_json


def fmt(vals: Sequence[float], digits: int = 3) -> str:
    """'m ± s' over the values (one value alone, a dash for none)."""
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def load_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or damaged (:func:`brmtrl.storage.load_json`)."""
    data = _read_json(path)
    return data if isinstance(data, dict) else {}
