"""Precision of the geometric median (and Krum's pick) next to one huge Byzantine row: issue 10's case.

Stand-alone script (not part of the test suite). Run from the repository root::

    python benchmarks/gm_precision.py [--before REV] > benchmarks/gm_precision.out.md

Data (issue 10's reproduction): n = 10 rows in d = 5000, nine honest rows ~ N(0, 0.01²), row 0 uniform in
±M, for M = 1e3 … 1.7e308, float64 (and float32 up to 3e38), seeds 0-2. For each case it compares

* ``after``: ``brmtrl.aggregators`` of this checkout,
* ``before``: the same module at git revision REV (default ``e3c503d``, the code issue 10 was filed on),
  loaded from ``git show`` into a private module,

against an exact geometric median computed independently here (numpy, float64, no Gram matrix: smoothed
Weiszfeld on the rows about their coordinate-wise median, distances of halved differences rescaled by
their largest entry so nothing overflows, run to a step of 1e-15 of the median distance). Reported: the
error ‖z − z*‖ relative to the median distance of the rows to z* (the scale the tolerance ``tol = 1e-8``
refers to) and relative to ‖z*‖, whether the rule *said* it converged, and whether Krum (f = 1) picked the
row that exact distances pick.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

import brmtrl
from brmtrl import aggregators as after

MS64 = [1e3, 1e8, 1e12, 1e30, 1e100, 1e300, 1.7e308]
MS32 = [1e3, 1e12, 1e30, 3e38]
SEEDS = [0, 1, 2]
N, D, SIGMA = 10, 5000, 0.01


def load_before(rev: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:src/brmtrl/aggregators.py"], check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / "aggregators_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("aggregators_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- independent float64 oracle
def safe_norms(v: np.ndarray) -> np.ndarray:
    v = np.atleast_2d(v) * 0.5
    m = np.abs(v).max(axis=1)
    with np.errstate(over="ignore"):
        return 2.0 * m * np.linalg.norm(v / np.where(m > 0, m, 1.0)[:, None], axis=1)


def exact_gm(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    c = np.median(x, axis=0)
    with np.errstate(over="ignore"):
        xc = x - c
    if not np.isfinite(xc).all():
        xc, c = x, np.zeros_like(c)
    z = np.zeros(x.shape[1])
    for _ in range(200_000):
        v = xc * 0.5 - z * 0.5
        m = np.abs(v).max(axis=1)
        v = v / np.where(m > 0, m, 1.0)[:, None]
        r = np.linalg.norm(v, axis=1)
        u = v / np.where(r > 0, r, 1.0)[:, None]
        with np.errstate(over="ignore"):
            dist = 2.0 * m * r
        with np.errstate(over="ignore", divide="ignore"):
            step = (np.minimum(dist / eps, 1.0)[:, None] * u).sum(axis=0) / (1.0 / np.maximum(dist, eps)).sum()
        z = z + step
        if np.linalg.norm(step) <= 1e-15 * max(float(np.median(dist)), eps):
            return z + c
    raise RuntimeError("oracle did not converge")


def exact_krum_pick(x: np.ndarray, f: int) -> int:
    d2 = np.stack([safe_norms(x - row) ** 2 for row in x])
    np.fill_diagonal(d2, np.inf)
    return int(np.argmin(np.sort(d2, axis=1)[:, : x.shape[0] - f - 2].sum(axis=1)))


def case(m: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = SIGMA * torch.randn(N, D, generator=g, dtype=torch.float64)
    x[0] = (torch.rand(D, generator=g, dtype=torch.float64) * 2 - 1) * m
    return x.to(dtype)


def measure(mod: types.ModuleType, x: torch.Tensor, ref: np.ndarray, pick: int) -> dict[str, object]:
    try:
        with np.errstate(all="ignore"):
            res = mod.geometric_median_result(x)
            z = res.point.double().numpy()
            err = float(safe_norms(z - ref)[0]) if np.isfinite(z).all() else float("inf")
            k = int(torch.argmin(mod.krum_scores(x, f=1)))
        med = float(np.median(safe_norms(x.double().numpy() - ref)))
        return {"rel_med": err / med, "rel_norm": err / float(safe_norms(ref)[0]), "converged": bool(res.converged),
                "iters": int(res.iterations), "krum_ok": k == pick}
    except Exception as exc:  # the old code may raise on overflow: report it
        return {"error": f"{type(exc).__name__}: {exc}"[:60]}


def fmt(r: dict[str, object]) -> str:
    if "error" in r:
        return f"raises {r['error']}"
    flag = "conv." if r["converged"] else "not conv."
    return f"{r['rel_med']:.1e} ({flag}, {r['iters']} it.)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="e3c503d", help="git revision of the 'before' code (default e3c503d)")
    args = ap.parse_args()
    before = load_before(args.before)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print("# Geometric-median precision next to one huge row (issue 10)\n")
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; machine: {platform.machine()}, "
          f"python {platform.python_version()}, torch {torch.__version__}, brmtrl {brmtrl.__version__} "
          f"(after = this checkout, before = `{args.before}`)")
    print(f"- data: n = {N}, d = {D}, nine honest rows ~ N(0, {SIGMA}²), row 0 uniform in ±M; seeds {SEEDS}")
    print("- error = ‖z − z*‖ / median_i ‖xᵢ − z*‖ (z* the exact float64 median computed independently; the "
          "rules' `tol` = 1e-8 is relative to this scale), worst of the seeds; 'conv.' is what the rule "
          "reported; Krum pick = rows picked as exact distances pick them (f = 1), seeds agreeing / total\n")
    for dtype, ms in ((torch.float64, MS64), (torch.float32, MS32)):
        name = str(dtype).replace("torch.", "")
        print(f"## {name}\n")
        print("| M | before: GM error (worst seed) | before: ‖z − z*‖/‖z*‖ | before: Krum pick | "
              "after: GM error (worst seed) | after: ‖z − z*‖/‖z*‖ | after: Krum pick |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for m in ms:
            cols = []
            for mod in (before, after):
                rs = []
                for seed in SEEDS:
                    x = case(m, seed, dtype)
                    xn = x.double().numpy()
                    rs.append(measure(mod, x, exact_gm(xn), exact_krum_pick(xn, 1)))
                errs = [r for r in rs if "error" in r]
                if errs:
                    cols += [fmt(errs[0]), "–", "–"]
                    continue
                worst = max(rs, key=lambda r: float(r["rel_med"]))  # type: ignore[arg-type]
                krum_ok = sum(bool(r["krum_ok"]) for r in rs)
                cols += [fmt(worst), f"{float(worst['rel_norm']):.1e}", f"{krum_ok}/{len(rs)}"]  # type: ignore[arg-type]
            print(f"| {m:.3g} | " + " | ".join(cols) + " |")
        print()
    print(f"Total wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
