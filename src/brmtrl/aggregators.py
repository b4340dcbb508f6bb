"""Robust aggregation rules: pure functions on a stacked ``(n, d)`` tensor, one row per client.

Every rule takes the rows as a 2-D tensor and returns a 1-D tensor of length ``d`` in the input's
dtype; hyperparameters are keyword-only. Distances are computed in float64 from the Gram matrix of
the centred rows (accumulated in float64), so that ``d = 10⁶`` costs one GEMM and the rest is O(n²). No rule takes sample
counts: a Byzantine client could report any count.

>>> import torch
>>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [100.0, 100.0]])
>>> krum(x, f=1)
tensor([0.2000, 0.2000])
>>> mean(x)
tensor([20.2400, 20.2400])
>>> geometric_median(x).round(decimals=2)
tensor([0.2100, 0.2100])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = [
    "AGGREGATORS",
    "GeometricMedianResult",
    "Rule",
    "geometric_median",
    "geometric_median_result",
    "krum",
    "krum_scores",
    "mean",
    "median",
    "multi_krum",
    "pairwise_sq_distances",
    "trimmed_mean",
    "weiszfeld_reference",
]


def _rows(x: torch.Tensor, rule: str) -> torch.Tensor:
    """The one input check every rule shares."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{rule}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{rule}: expected a 2-D tensor (one row per client), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{rule}: no rows to aggregate")
    if not x.is_floating_point():
        raise TypeError(f"{rule}: expected a floating-point tensor, got {x.dtype}")
    return x


def _check_f(rule: str, f: int, n: int, need: int) -> None:
    """``need`` is the smallest n as a function of f: 2f+1 (median-type) or 2f+3 (Krum)."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{rule}: f must be an int >= 0. Got {f!r} instead.")
    if n < need:
        raise ValueError(f"{rule}: cannot tolerate f={f} Byzantine rows among n={n}; it needs n >= {need}")


def _gram_centred(x: torch.Tensor) -> torch.Tensor:
    """G = (X − x̄)(X − x̄)ᵀ, (n, n) float64, in one pass over X.

    Columns are centred chunk by chunk (each chunk stays in cache for its GEMM), in the input's
    precision, and the chunk Grams are summed in float64: centring first keeps the distances
    ‖x_i − x_j‖² = G_ii + G_jj − 2G_ij free of the cancellation that the raw XXᵀ would suffer
    when the rows sit far from the origin, and no float64 copy of X is made.
    """
    n, d = x.shape
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    step = max(4096, (1 << 21) // max(n, 1))
    for start in range(0, d, step):
        c = x[:, start:start + step]
        c = c - c.mean(dim=0, keepdim=True)
        g += (c @ c.T).to(torch.float64)
    return g


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """‖x_i − x_j‖² for all pairs, (n, n) float64, from one Gram matrix: G_ii + G_jj − 2 G_ij."""
    g = _gram_centred(_rows(x, "pairwise_sq_distances"))
    diag = g.diagonal()
    return (diag[:, None] + diag[None, :] - 2.0 * g).clamp_min_(0.0).fill_diagonal_(0.0)


# --------------------------------------------------------------------------- mean and medians
def mean(x: torch.Tensor) -> torch.Tensor:
    """Arithmetic mean x̄ = (1/n) Σ_i x_i (plain FedRep / FedAvg with equal weights). Not robust."""
    x = _rows(x, "mean")
    return x.to(torch.float64).mean(dim=0).to(x.dtype)


def median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin et al., ICML 2018); the lower median for even n."""
    x = _rows(x, "median")
    return x.median(dim=0).values


def trimmed_mean(x: torch.Tensor, *, f: int = 0) -> torch.Tensor:
    """Coordinate-wise trimmed mean: per coordinate drop the f largest and f smallest values, average
    the rest (Yin et al., ICML 2018). Needs n >= 2f + 1."""
    x = _rows(x, "trimmed_mean")
    n = x.shape[0]
    _check_f("trimmed_mean", f, n, 2 * f + 1)
    s = x.to(torch.float64).sort(dim=0).values
    return s[f:n - f].mean(dim=0).to(x.dtype)


# --------------------------------------------------------------------------- geometric median
@dataclass(frozen=True)
class GeometricMedianResult:
    """The point, the affine weights α (point = Σ α_i x_i), Weiszfeld iterations and convergence."""

    point: torch.Tensor
    weights: torch.Tensor
    iterations: int
    converged: bool
    objective: float


def geometric_median_result(x: torch.Tensor, *, tol: float = 1e-8, max_iter: int = 1000,
                            eps: float = 1e-8) -> GeometricMedianResult:
    """Smoothed Weiszfeld iterations for argmin_z Σ_i ‖z − x_i‖, run in the span of the rows.

    Update (Weiszfeld 1937; smoothing ν = ``eps`` as in Pillutla, Kakade & Harchaoui, "Robust
    Aggregation for Federated Learning", IEEE TSP 2022)::

        β_i = 1 / max(ν, ‖z − x_i‖),   z ← Σ_i β_i x_i / Σ_i β_i

    Every iterate is an affine combination z = Σ α_i x_i (Σ α_i = 1), so with G the Gram matrix of
    the centred rows, ‖z − x_i‖² = G_ii − 2 (Gα)_i + αᵀGα and each iteration costs O(n²) instead
    of O(nd). Stops when the step ‖z_{t+1} − z_t‖ falls below ``tol`` × (RMS distance of the rows
    to their mean), or after ``max_iter`` iterations. Sample counts are never used.
    """
    x = _rows(x, "geometric_median")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"geometric_median: tol must be a float > 0. Got {tol!r} instead.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"geometric_median: max_iter must be an int >= 1. Got {max_iter!r} instead.")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"geometric_median: eps must be a float > 0. Got {eps!r} instead.")
    g = _gram_centred(x).cpu().numpy()  # the O(n²) iterations run on the host, in float64
    alpha, it, converged = _weiszfeld_affine(g, tol, max_iter, eps)
    diag = np.diagonal(g)
    dist = np.sqrt(np.clip(diag - 2.0 * (g @ alpha) + alpha @ g @ alpha, 0.0, None))
    weights = torch.from_numpy(alpha).to(x.device)
    point = weights.to(x.dtype) @ x if x.dtype != torch.float64 else weights @ x
    return GeometricMedianResult(point, weights, it, converged, float(dist.sum()))


def _weiszfeld_affine(g: np.ndarray, tol: float, max_iter: int, eps: float) -> tuple[np.ndarray, int, bool]:
    """Weiszfeld on the affine weights α, given the Gram matrix G of the centred rows."""
    n = g.shape[0]
    diag = np.diagonal(g)
    scale = math.sqrt(max(float(diag.mean()), 0.0))
    alpha = np.full(n, 1.0 / n)
    converged, it = n == 1 or scale == 0.0, 0
    limit = (tol * scale) ** 2
    while not converged and it < max_iter:
        it += 1
        galpha = g @ alpha
        dist = np.sqrt(np.maximum(diag - 2.0 * galpha + alpha @ galpha, 0.0))
        beta = 1.0 / np.maximum(dist, eps)
        new = beta / beta.sum()
        step = new - alpha
        alpha = new
        converged = float(step @ g @ step) <= limit
    return alpha, it, bool(converged)


def geometric_median(x: torch.Tensor, *, tol: float = 1e-8, max_iter: int = 1000,
                     eps: float = 1e-8) -> torch.Tensor:
    """Geometric median argmin_z Σ_i ‖z − x_i‖ by smoothed Weiszfeld (see
    :func:`geometric_median_result`); breakdown point 1/2 (Lopuhaä & Rousseeuw 1991)."""
    return geometric_median_result(x, tol=tol, max_iter=max_iter, eps=eps).point


def weiszfeld_reference(x: torch.Tensor, *, tol: float = 1e-12, max_iter: int = 100_000,
                        eps: float = 1e-12) -> torch.Tensor:
    """Plain float64 Weiszfeld on the rows themselves, O(nd) per iteration: the test oracle."""
    x64 = _rows(x, "weiszfeld_reference").to(torch.float64)
    z = x64.mean(dim=0)
    for _ in range(max_iter):
        beta = 1.0 / (x64 - z).norm(dim=1).clamp_min(eps)
        new = (beta[:, None] * x64).sum(0) / beta.sum()
        done = (new - z).norm() <= tol * max(1.0, float(new.norm()))
        z = new
        if done:
            break
    return z


# --------------------------------------------------------------------------- Krum
def krum_scores(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖², N_i the n − f − 2 rows nearest to x_i (j ≠ i)."""
    n = x.shape[0]
    d2 = pairwise_sq_distances(x)
    d2.fill_diagonal_(float("inf"))
    k = n - f - 2
    return d2.topk(k, dim=1, largest=False).values.sum(dim=1) if k > 0 else torch.zeros(n, dtype=d2.dtype, device=d2.device)


def krum(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017): the row with the lowest score

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the n − f − 2 nearest rows to x_i.

    Needs n >= 2f + 3. Ties go to the lowest index.
    """
    x = _rows(x, "krum")
    _check_f("krum", f, x.shape[0], 2 * f + 3)
    return x[int(torch.argmin(krum_scores(x, f=f)))].clone()


def multi_krum(x: torch.Tensor, *, f: int, m: int | None = None) -> torch.Tensor:
    """Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): the mean of the m rows with the
    lowest Krum scores; m defaults to n − f. ``m = 1`` is Krum."""
    x = _rows(x, "multi_krum")
    n = x.shape[0]
    _check_f("multi_krum", f, n, 2 * f + 3)
    m = n - f if m is None or m == 0 else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum: m must be an int in [1, n={n}]. Got {m!r} instead.")
    order = torch.argsort(krum_scores(x, f=f), stable=True)[:m]
    return x[order].to(torch.float64).mean(dim=0).to(x.dtype)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Rule:
    """A registry entry: the callable, the ``aggregator.*`` config keys it takes as keyword
    arguments, and the fewest rows it needs for a given f (None: any number)."""

    fn: Callable[..., torch.Tensor]
    params: tuple[str, ...] = ()
    min_rows: Callable[[int], int] | None = None

    def largest_f(self, n: int) -> int:
        """The largest f this rule tolerates among n rows."""
        if self.min_rows is None:
            return n
        f = 0
        while self.min_rows(f + 1) <= n:
            f += 1
        return f


#: config name -> rule
AGGREGATORS: dict[str, Rule] = {
    "mean": Rule(mean),
    "median": Rule(median),
    "trimmed_mean": Rule(trimmed_mean, ("f",), lambda f: 2 * f + 1),
    "geometric_median": Rule(geometric_median, ("tol", "max_iter", "eps")),
    "krum": Rule(krum, ("f",), lambda f: 2 * f + 3),
    "multi_krum": Rule(multi_krum, ("f", "m"), lambda f: 2 * f + 3),
}
