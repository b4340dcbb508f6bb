"""Helpers the experiment scripts share (formatting, reading results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def fmt(vals: Sequence[float], digits: int = 3) -> str:
    """'m ± s' over the values (one value alone, a dash for none)."""
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def load_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or damaged."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
