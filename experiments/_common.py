"""Helpers the experiment scripts share (formatting, reading results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

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


def _union(old: str, new: str, sep: str) -> str:
    """``old`` and the parts of ``new`` it lacks, joined by ``sep`` (merging a merged file again adds nothing)."""
    parts = [p for p in old.split(sep) if p]
    return sep.join(parts + [p for p in new.split(sep) if p and p not in parts])


def merge(new: dict[str, Any], data_file: Path, items: str, key: Callable[[dict[str, Any]], tuple[Any, ...]]) -> dict[str, Any]:
    """``new`` (just exported from runs) with the entries of the committed ``data_file`` that it lacks: a
    study that ran across machines or fresh checkouts (``runs/`` is not committed) keeps the finished runs
    it published before. ``items`` names the list of entries, ``key`` identifies one (a run just read
    wins); the provenance (``sweep``) lists both sources."""
    old = json.loads(data_file.read_text())
    have = {key(e) for e in new[items]}
    merged = dict(new)
    merged[items] = [e for e in old.get(items, []) if key(e) not in have] + list(new[items])
    if "sweep" in old and "sweep" in new:
        o, n = old["sweep"], new["sweep"]
        merged["sweep"] = {"path": _union(o["path"], n["path"], "; "), "command": _union(o["command"], n["command"], " && "),
                           "wall_s": n.get("wall_s", 0.0)}   # the tables sum the cells' own wall times
    if "cells_total" in old:   # per sweep (a study may span grids): the sweeps just read win
        totals = dict(old.get("totals") or {old.get("sweep", {}).get("path", ""): int(old["cells_total"])})
        totals.update(new.get("totals") or {})
        merged["totals"] = totals
        merged["cells_total"] = sum(totals.values()) if new.get("totals") else \
            max(int(old["cells_total"]), int(new.get("cells_total", 0)))
    for k, v in old.items():
        merged.setdefault(k, v)
    return merged


def publish(data: dict[str, Any] | None, data_file: Path | None, tables: Callable[[dict[str, Any]], list[str]],
            out: Path, name: str) -> None:
    """Write ``<out>/<name>.md`` from ``tables(data)`` and print it; ``data`` (just exported) is saved as
    ``<out>/data/<name>.json`` first, or, when ``data_file`` is given, read from that committed file."""
    if data_file is not None:
        data = json.loads(data_file.read_text())
    else:
        assert data is not None
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / f"{name}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
    lines = tables(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
