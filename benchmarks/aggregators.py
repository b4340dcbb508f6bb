"""Benchmark brmtrl's robust aggregation rules against a lower bound and two peer libraries.

Stand-alone script (not part of the test suite). Run from the repository root::

    python benchmarks/aggregators.py            # the full table (minutes)
    python benchmarks/aggregators.py --quick    # small sizes only: checks that it runs

It times, on a float32 tensor X of shape (n, d):

* bound: GEMM = ``X @ X.T`` (float32), PASS = ``X.sum(0)`` (one pass over the data), BOUND = GEMM + PASS;
* ours:  ``brmtrl.aggregators.geometric_median(X)`` (default tolerance) and ``krum(X, f=f)``;
  ``bulyan(X, f=fb)`` (fb the largest f Bulyan tolerates, capped at n//4), ``centered_clipping(X)``
  (τ automatic, 3 iterations) and, through the server's entry point ``aggregate``, NNM + geometric
  median (``pre=["nnm"]``, Krum's f) and bucketing + geometric median (``pre=["bucketing"]``, s = 2),
  each row's trust included;
* Flower (flwr 1.41, optional): ``flwr.serverapp.strategy.multikrum.select_multikrum`` with
  ``num_nodes_to_select=1`` (Krum) followed by ``strategy_utils.aggregate_arrayrecords`` -- the same two
  calls ``MultiKrum.aggregate_train`` makes. The conversion X -> list[RecordDict] (one ArrayRecord per
  row) is done once, outside the timed region; the deserialisation of the records back to one (n, d)
  ndarray happens *inside* ``select_multikrum`` (``compute_distances``) and cannot be separated, so it is
  timed;
* ByzFL (optional): ``byzfl.GeometricMedian()`` (its defaults nu=0.1, T=3: a fixed 3 Weiszfeld steps
  from z=0, no convergence test) and ``byzfl.Krum(f=f)``, both called on the float32 torch tensor X.

Each cell is the fastest of its repetitions after one warm-up run: at least 5, and as many more (up to 100)
as fit in 0.5 s, so that a millisecond cell is the fastest of about a hundred runs and not of five; the
garbage collector runs once before them and is off while they run, as in ``timeit`` (on this shared,
virtualised machine the same call varies by up to 2× from run to run, and interference only ever adds time,
so the minimum is the stable statistic, as ``timeit`` advises). In the table of every shipped rule, each run of
the rule is followed by one run of the bound, and the ratio is the rule's fastest over the bound's fastest from
those same seconds (the machine's speed moves within minutes; a bound timed once per (n, d) drifts away from
the rules timed after it); a rule whose extrapolated or
warm-up time exceeds ~60 s is reported as "skipped (>60 s)". Peers that are not importable are reported
as "not installed".
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import platform
import shlex
import statistics
import sys
import time
import types
from typing import Callable

import numpy as np
import torch

import brmtrl
from brmtrl import aggregators as agg
from brmtrl.aggregators import kernels
from brmtrl.server import Aggregation, aggregate as server_aggregate

SEED = 0
THREADS = 2
CAP_S = 60.0        # wall-clock cap for one rule on one (n, d), warm-up included
MIN_REPS, MAX_REPS = 5, 100   # repetitions of a cell: at least MIN_REPS, more while they fit in REPS_BUDGET_S
REPS_BUDGET_S = 0.5
CONFIGS = [(10, 100_000), (10, 1_000_000), (100, 100_000), (100, 200_000), (100, 1_000_000)]
QUICK_CONFIGS = [(10, 10_000), (20, 20_000)]
#: every shipped rule and pre-step: label -> (rule, pre, keyword arguments; "f": Krum's f, "fb": Bulyan's)
EVERY: dict[str, tuple[str, list[str], dict[str, object]]] = {
    "mean": ("mean", [], {}),
    "median": ("median", [], {}),
    "trimmed mean": ("trimmed_mean", [], {"f": "f"}),
    "geometric median": ("geometric_median", [], {}),
    "Krum": ("krum", [], {"f": "f"}),
    "Multi-Krum": ("multi_krum", [], {"f": "f"}),
    "Bulyan": ("bulyan", [], {"f": "fb"}),
    "centered clipping": ("centered_clipping", [], {}),
    "NNM + GM": ("geometric_median", ["nnm"], {"f": "f"}),
    "bucketing + GM": ("geometric_median", ["bucketing"], {"bucket_size": 2}),
    "ARC + GM": ("geometric_median", ["arc"], {"f": "f"}),
}


def krum_f(n: int) -> int:
    """Byzantine count used for Krum: the largest Krum tolerates, (n - 3) // 2, capped at n // 4."""
    return min((n - 3) // 2, n // 4)


def bulyan_f(n: int) -> int:
    """Byzantine count used for Bulyan: the largest it tolerates, (n - 3) // 4, capped at n // 4."""
    return min((n - 3) // 4, n // 4)


# --------------------------------------------------------------------------- optional peers
def _load_flower():
    try:
        import flwr
        from flwr.app import ArrayRecord, MetricRecord, RecordDict
        from flwr.serverapp.strategy.multikrum import select_multikrum
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return None, f"not installed ({type(exc).__name__})"
    return types.SimpleNamespace(version=flwr.__version__, ArrayRecord=ArrayRecord, MetricRecord=MetricRecord,
                                 RecordDict=RecordDict, select_multikrum=select_multikrum,
                                 aggregate_arrayrecords=aggregate_arrayrecords), ""


def _load_byzfl():
    """``import byzfl`` pulls in torchvision (byzfl.benchmark) at package import; the aggregators only need
    numpy/scipy/torch. If the full import fails, load ``byzfl.aggregators`` without running
    ``byzfl/__init__.py`` (a namespace stand-in for the top package pointing at the installed files)."""
    try:
        import byzfl
        return types.SimpleNamespace(GeometricMedian=byzfl.GeometricMedian, Krum=byzfl.Krum,
                                     how="import byzfl"), ""
    except ImportError as exc:
        first_error = exc
    for name in [m for m in sys.modules if m == "byzfl" or m.startswith("byzfl.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None, "not installed"
    stub = types.ModuleType("byzfl")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = stub
    try:
        mod = importlib.import_module("byzfl.aggregators")
    except Exception as exc:  # noqa: BLE001
        del sys.modules["byzfl"]
        return None, f"not installed ({type(exc).__name__}: {exc})"
    how = (f"byzfl.aggregators loaded without byzfl/__init__.py (`import byzfl` failed: "
           f"{type(first_error).__name__}: {first_error})")
    return types.SimpleNamespace(GeometricMedian=mod.GeometricMedian, Krum=mod.Krum, how=how), ""


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return "?"


# --------------------------------------------------------------------------- timing
class Timer:
    """Times one rule across the (n, d) rows; extrapolates from its previous row to skip slow ones."""

    def __init__(self) -> None:
        self.last: tuple[int, int, float] | None = None  # (n, d, seconds) of the previous measured row
        self.paired_best: float | None = None             # the paired bound's fastest in the last run()

    def estimate(self, n: int, d: int) -> float:
        if self.last is None:
            return 0.0
        n0, d0, t0 = self.last
        return t0 * (d / d0) * (n / n0) ** 2   # pessimistic: O(n^2 d)

    def run(self, fn: Callable[[], object], n: int, d: int,
            paired: Callable[[], object] | None = None) -> tuple[float | None, str, object]:
        """Return (fastest seconds or None, cell note, last result). With ``paired`` (the bound), each
        repetition also times it right after ``fn``, and :attr:`paired_best` is its fastest: the rule and
        its bound measured in the same seconds, so that a change of the machine's speed between the two
        (here up to 2× within minutes) does not enter their ratio."""
        self.paired_best = None
        if self.estimate(n, d) > CAP_S:
            return None, "skipped (>60 s)", None
        gc.collect()
        t = time.perf_counter()
        out = fn()                                   # warm-up, also used to size the repetitions
        warm = time.perf_counter() - t
        if warm > CAP_S:
            self.last = (n, d, warm)
            return None, "skipped (>60 s)", out
        reps = max(MIN_REPS, min(MAX_REPS, int(REPS_BUDGET_S / max(warm, 1e-9))))
        reps = max(1, min(reps, int((CAP_S - warm) / max(warm, 1e-9))))
        times, bound_times = [], []
        del out
        if paired is not None:
            paired()                                 # its warm-up
        gc.collect()
        gc.disable()                                 # as timeit: no collection inside a timed run
        try:
            for i in range(reps):
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
                if paired is not None:
                    t = time.perf_counter()
                    paired()
                    bound_times.append(time.perf_counter() - t)
                if i + 1 < reps:
                    del out
        finally:
            gc.enable()
        best = min(times)
        self.paired_best = min(bound_times) if bound_times else None
        self.last = (n, d, best)
        return best, f"{reps}", out


def fmt_s(t: float | None, note: str = "") -> str:
    if t is None:
        return note
    if t >= 1.0:
        return f"{t:.2f} s"
    return f"{t * 1e3:.1f} ms"


def fmt_d(d: int) -> str:
    return f"{d:.0e}".replace("e+0", "e")


def fmt_ratio(t: float | None, bound: float | None) -> str:
    return "–" if t is None or not bound else f"{t / bound:.2f}×"


# --------------------------------------------------------------------------- data
def make_data(n: int, d: int, f: int, gen: torch.Generator) -> torch.Tensor:
    """n - f honest rows mu + 0.5 * N(0, I) around a common mu ~ N(0, I); f Byzantine rows 5 * N(0, I)."""
    mu = torch.randn(d, generator=gen)
    x = mu + 0.5 * torch.randn(n, d, generator=gen)
    x[n - f:] = 5.0 * torch.randn(f, d, generator=gen)
    return x.contiguous()


def objective(x64: torch.Tensor, z: torch.Tensor) -> float:
    return float((x64 - z.to(torch.float64)).norm(dim=1).sum())


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes only {QUICK_CONFIGS}: checks that it runs")
    args = parser.parse_args(argv)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    t_start = time.perf_counter()
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    flower, flower_note = _load_flower()
    byz, byz_note = _load_byzfl()

    cmd = shlex.join(["python", *sys.argv])
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print("# Aggregation benchmark\n")
    print(f"Command: `{cmd}` (cwd `{os.getcwd()}`)\n")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"- machine: {platform.machine()}, {cpu}, os.cpu_count()={os.cpu_count()}, "
          f"load average at start {os.getloadavg()[0]:.2f} (other jobs may share the cores)")
    print(f"- python {platform.python_version()}, torch {torch.__version__}, "
          f"torch.get_num_threads()={torch.get_num_threads()}, numpy {np.__version__}, brmtrl {brmtrl.__version__ if hasattr(brmtrl, '__version__') else _dist_version('brmtrl')}")
    print(f"- flwr: {flower.version if flower else flower_note}; byzfl: "
          f"{_dist_version('byzfl') if byz else byz_note}")
    if byz is not None:
        print(f"- byzfl import: {byz.how}")
    print(f"- brmtrl's compiled kernels (few rows on the CPU, `brmtrl.aggregators.kernels`): {kernels.status()} "
          f"(`BRMTRL_KERNELS=0` for the numpy path)")
    print(f"- numpy BLAS threads (Flower's GEMM) are not set by torch.set_num_threads; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"- data: float32, seed {SEED}; n − f honest rows mu + 0.5·N(0, I), f rows 5·N(0, I); "
          f"Krum and NNM f = min((n − 3)//2, n//4) (n=10: f={krum_f(10)}, n=100: f={krum_f(100)}); "
          f"Bulyan f = min((n − 3)//4, n//4) (n=10: f={bulyan_f(10)}, n=100: f={bulyan_f(100)}); "
          "CC = centered_clipping (τ automatic, 3 iterations); bucketing s = 2")
    print(f"- each cell: fastest of {MIN_REPS} to {MAX_REPS} runs (as many as fit in {REPS_BUDGET_S} s; the garbage "
          f"collector off while they run) after 1 warm-up (number of runs in the checks "
          f"table); a rule is skipped if it would exceed ~{CAP_S:.0f} s on one row")
    print("- Flower Krum = `select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=1)` + "
          "`aggregate_arrayrecords(selected, 'num-examples')`; building the RecordDicts from X is untimed, "
          "unpacking them to an ndarray inside `select_multikrum` is timed")
    print("- ByzFL GM = `GeometricMedian()(X)` with its defaults nu=0.1, T=3 (fixed 3 iterations from z=0); "
          "ByzFL Krum = `Krum(f=f)(X)`\n")
    sys.stdout.flush()

    ours = ("gm", "krum", "bulyan", "cc", "nnm_gm", "bkt_gm", "srv_gm", "srv_nnm_gm")
    timers = {k: Timer() for k in ("gemm", "pass", *ours, "fl_krum", "bz_gm", "bz_krum")}
    every = {k: Timer() for k in EVERY}
    rows, checks, engine_rows, every_rows = [], [], [], {k: [] for k in EVERY}
    gen = torch.Generator().manual_seed(SEED)
    for n, d in configs:
        f = krum_f(n)
        x = make_data(n, d, f, gen)
        cell: dict[str, tuple[float | None, str, object]] = {}
        cell["gemm"] = timers["gemm"].run(lambda: x @ x.T, n, d)
        cell["pass"] = timers["pass"].run(lambda: x.sum(0), n, d)
        cell["gm"] = timers["gm"].run(lambda: agg.geometric_median(x), n, d)
        iters = agg.geometric_median_result(x)
        cell["krum"] = timers["krum"].run(lambda: agg.krum(x, f=f), n, d)
        fb = bulyan_f(n)
        cell["bulyan"] = timers["bulyan"].run(lambda: agg.bulyan(x, f=fb), n, d)
        cell["cc"] = timers["cc"].run(lambda: agg.centered_clipping(x), n, d)
        cell["nnm_gm"] = timers["nnm_gm"].run(lambda: agg.aggregate("geometric_median", x, pre=["nnm"], f=f), n, d)
        cell["bkt_gm"] = timers["bkt_gm"].run(
            lambda: agg.aggregate("geometric_median", x, pre=["bucketing"], bucket_size=2,
                                  generator=torch.Generator().manual_seed(SEED)), n, d)
        # what the engines run: the server step's aggregate, which casts the float32 updates to float64
        gm_rule = Aggregation("geometric_median", 0, {"tol": 1e-8, "max_iter": 1000, "eps": 1e-8})
        nnm_rule = Aggregation("geometric_median", f, {"tol": 1e-8, "max_iter": 1000, "eps": 1e-8}, pre=("nnm",))
        cell["srv_gm"] = timers["srv_gm"].run(lambda: server_aggregate(x, gm_rule), n, d)
        cell["srv_nnm_gm"] = timers["srv_nnm_gm"].run(lambda: server_aggregate(x, nnm_rule), n, d)
        engine_rows.append([str(n), fmt_d(d), fmt_s(cell["gm"][0], cell["gm"][1]),
                            fmt_s(cell["srv_gm"][0], cell["srv_gm"][1]), fmt_ratio(cell["srv_gm"][0], cell["gm"][0]),
                            fmt_s(cell["nnm_gm"][0], cell["nnm_gm"][1]),
                            fmt_s(cell["srv_nnm_gm"][0], cell["srv_nnm_gm"][1]),
                            fmt_ratio(cell["srv_nnm_gm"][0], cell["nnm_gm"][0])])

        if flower is not None:
            contents = [flower.RecordDict({"arrays": flower.ArrayRecord([row.numpy()]),
                                           "metrics": flower.MetricRecord({"num-examples": 1})})
                        for row in x]

            def flower_krum():
                selected = flower.select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=1)
                return flower.aggregate_arrayrecords(selected, "num-examples")

            cell["fl_krum"] = timers["fl_krum"].run(flower_krum, n, d)
        if byz is not None:
            bz_gm, bz_krum = byz.GeometricMedian(), byz.Krum(f=f)
            cell["bz_gm"] = timers["bz_gm"].run(lambda: bz_gm(x), n, d)
            cell["bz_krum"] = timers["bz_krum"].run(lambda: bz_krum(x), n, d)

        bound = cell["gemm"][0] + cell["pass"][0]

        def bound_once() -> None:
            x @ x.T
            x.sum(0)

        for key, (rule, pre, kwargs) in EVERY.items():      # every shipped rule and step, through aggregate()
            kw = {k: (f if v == "f" else bulyan_f(n) if v == "fb" else v) for k, v in kwargs.items()}
            if pre == ["bucketing"]:
                kw["generator"] = torch.Generator().manual_seed(SEED)
            t, note, _ = every[key].run(lambda: agg.aggregate(rule, x, pre=pre, **kw), n, d, paired=bound_once)
            paired_bound = every[key].paired_best
            every_rows[key].append(f"{fmt_ratio(t, paired_bound)} ({fmt_s(t, note)} / {fmt_s(paired_bound)})"
                                   if t is not None else note)
        row = [str(n), fmt_d(d), fmt_s(cell["gemm"][0]), fmt_s(cell["pass"][0]),
               fmt_s(bound), fmt_s(cell["gm"][0], cell["gm"][1]), fmt_ratio(cell["gm"][0], bound),
               fmt_s(cell["krum"][0], cell["krum"][1]), fmt_ratio(cell["krum"][0], bound)]
        for k in ("bulyan", "cc", "nnm_gm", "bkt_gm"):
            row += [fmt_s(cell[k][0], cell[k][1]), fmt_ratio(cell[k][0], bound)]
        row.append(fmt_s(cell["fl_krum"][0], cell["fl_krum"][1]) if flower else "not installed")
        if byz:
            row += [fmt_s(cell["bz_gm"][0], cell["bz_gm"][1]), fmt_s(cell["bz_krum"][0], cell["bz_krum"][1])]
        else:
            row += ["not installed", "not installed"]
        rows.append(row)

        # ---- checks (untimed)
        x64 = x.to(torch.float64)
        gm = agg.geometric_median(x)
        obj = objective(x64, gm)
        ours_krum = agg.krum(x, f=f)
        ours_idx = int(torch.argmin(agg.krum_scores(x, f=f)))
        ck = {"n": n, "d": d, "f": f, "it": f"{iters.iterations} ({'conv.' if iters.converged else 'NOT conv.'})",
              "reps": "/".join(cell[k][1] if cell[k][0] is not None else "–"
                               for k in ("gm", "krum", "fl_krum", "bz_gm", "bz_krum") if k in cell)}
        if byz and cell["bz_gm"][2] is not None:
            z = cell["bz_gm"][2]
            dz = float((z.to(torch.float64) - gm.to(torch.float64)).norm())
            ck["bz_gm_dist"] = f"{dz:.3g} ({dz / float(gm.to(torch.float64).norm()):.2%})"
            ck["bz_gm_obj"] = f"{objective(x64, z) / obj - 1:+.2%}"
        else:
            ck["bz_gm_dist"] = ck["bz_gm_obj"] = "–"

        def pick(v: torch.Tensor) -> str:
            hits = (x == v.to(x.dtype)).all(dim=1).nonzero().flatten().tolist()
            return str(hits[0]) if hits else "none"

        ck["krum_pick"] = f"ours {ours_idx} (check {pick(ours_krum)})"
        if flower and cell["fl_krum"][2] is not None:
            fl_out = torch.from_numpy(cell["fl_krum"][2].to_numpy_ndarrays()[0].copy())
            ck["krum_pick"] += f", Flower {pick(fl_out)}"
        if byz and cell["bz_krum"][2] is not None:
            ck["krum_pick"] += f", ByzFL {pick(cell['bz_krum'][2])}"
        checks.append(ck)
        del x64, cell   # x is rebound by the next cell (the timed lambdas close over it)
        if flower is not None:
            del contents
        gc.collect()
        print(f"<!-- done n={n} d={fmt_d(d)} at {time.perf_counter() - t_start:.0f} s -->", flush=True)

    print("\n## Times (fastest wall clock)\n")
    head = ["n", "d", "GEMM", "PASS", "BOUND", "ours GM", "GM/BOUND", "ours Krum", "Krum/BOUND",
            "ours Bulyan", "Bulyan/BOUND", "ours CC", "CC/BOUND", "ours NNM+GM", "NNM+GM/BOUND",
            "ours Bucketing+GM", "Bucketing+GM/BOUND", "Flower Krum", "ByzFL GM (T=3)", "ByzFL Krum"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    print("\n## Every shipped rule and pre-aggregation step, through `aggregate` (trust included): time / BOUND\n")
    print("Float32 input, the same rows as above; targets (issue 20): ≤ 3× at n = 100, d = 1e6 and ≤ 5× at n = 10, "
          "d = 1e5. Each cell: ratio (rule's fastest / BOUND's fastest), BOUND (`X @ X.T` then `X.sum(0)`) timed "
          "right after each of the rule's runs, so that both come from the same seconds.\n")
    head = ["rule", *(f"n={n}, d={fmt_d(d)}" for n, d in configs)]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "|".join("---:" for _ in configs) + "|")
    for key, cells in every_rows.items():
        print(f"| {key} | " + " | ".join(cells) + " |")

    print("\n## What the engines run (fastest wall clock)\n")
    print("The server step (`brmtrl.server.aggregate`) casts the float32 updates to float64 before any rule "
          "(the precision guarantees of docs/aggregators.md); the columns above time the rules on float32 input.\n")
    head = ["n", "d", "GM, float32 input", "GM, server step (float64)", "× float32",
            "NNM+GM, float32 input", "NNM+GM, server step (float64)", "× float32"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    for row in engine_rows:
        print("| " + " | ".join(row) + " |")

    print("\n## Checks (untimed)\n")
    head = ["n", "d", "Krum f", "ours GM iterations", "‖ByzFL GM − ours GM‖ (rel. to ‖ours GM‖)",
            "ByzFL GM objective excess", "Krum pick (row index)", "runs: GM/Krum/Flower/ByzFL GM/ByzFL Krum"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for ck in checks:
        print(f"| {ck['n']} | {fmt_d(ck['d'])} | {ck['f']} | {ck['it']} | {ck['bz_gm_dist']} | {ck['bz_gm_obj']} | "
              f"{ck['krum_pick']} | {ck['reps']} |")
    print("\nObjective excess = Σ‖x_i − z_ByzFL‖ / Σ‖x_i − z_ours‖ − 1 (float64). ByzFL's Krum averages the "
          "n − f − 1 nearest squared distances, ours and Flower's sum the n − f − 2 nearest; picks may differ.")
    print(f"\nTotal wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
