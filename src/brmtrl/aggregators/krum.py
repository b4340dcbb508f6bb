"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017) and Bulyan (El Mhamdi,
Guerraoui & Rouault, ICML 2018), from one matrix of pairwise distances (:func:`pairwise_sq_distances`)."""

from __future__ import annotations

import numpy as np
import torch

from .base import AggregateResult, _check_f, _rows, _share_trust
from .columns import combine_rows, nearest_to_median_mean
from .gram import pairwise_sq_distances

__all__ = ["bulyan", "bulyan_trusted", "krum", "krum_scores", "krum_trusted", "multi_krum", "multi_krum_trusted"]


def krum_scores(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖², N_i the n − f − 2 rows nearest to x_i (j ≠ i), from
    :func:`pairwise_sq_distances` (so accurate among the majority whatever the other rows hold)."""
    n = x.shape[0]
    d2 = pairwise_sq_distances(x)
    d2.fill_diagonal_(float("inf"))
    k = n - f - 2
    return d2.topk(k, dim=1, largest=False).values.sum(dim=1) if k > 0 else torch.zeros(n, dtype=d2.dtype, device=d2.device)


def _selected(n: int, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Trust 1 for ``rows``, 0 for the others."""
    t = torch.zeros(n, dtype=torch.float64, device=device)
    t[rows] = 1.0
    return t


def krum(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017): the row with the lowest score

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the n − f − 2 nearest rows to x_i.

    Needs n >= 2f + 3. Ties go to the lowest index.
    """
    return krum_trusted(x, f=f).point


def krum_trusted(x: torch.Tensor, *, f: int) -> AggregateResult:
    """:func:`krum`; trust 1 for the selected row, 0 for every other."""
    x = _rows(x, "krum")
    _check_f("krum", f, x.shape[0], 2 * f + 3)
    best = int(torch.argmin(krum_scores(x, f=f)))
    return AggregateResult(x[best].clone(), _selected(x.shape[0], torch.tensor([best]), x.device), {"f_used": f})


def multi_krum(x: torch.Tensor, *, f: int, m: int | None = None) -> torch.Tensor:
    """Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): the mean of the m rows with the
    lowest Krum scores; m defaults to n − f. ``m = 1`` is Krum."""
    return multi_krum_trusted(x, f=f, m=m).point


def multi_krum_trusted(x: torch.Tensor, *, f: int, m: int | None = None) -> AggregateResult:
    """:func:`multi_krum`; trust 1 for the m selected rows, 0 for the others."""
    x = _rows(x, "multi_krum")
    n = x.shape[0]
    _check_f("multi_krum", f, n, 2 * f + 3)
    m = n - f if m is None or m == 0 else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum: m must be an int in [1, n={n}]. Got {m!r} instead.")
    order = torch.argsort(krum_scores(x, f=f), stable=True)[:m]
    weights = torch.zeros(n, dtype=torch.float64)
    weights[order.cpu()] = 1.0 / m
    point = combine_rows(x, weights)
    return AggregateResult(point, _selected(n, order.cpu(), x.device), {"f_used": f})


def _iterated_krum(d2: np.ndarray, f: int, count: int) -> list[int]:
    """Bulyan's selection (El Mhamdi et al. 2018, Algorithm 1): ``count`` times, Krum(f) among the r rows
    left, whose winner is then removed. Krum among r rows scores each row by the sum of its squared
    distances to its r − f − 2 nearest rows left. Degenerate last picks: where r − f − 2 < 1 (with
    r = 2f + 1 rows left at the last pick this happens for f <= 1), the paper's score is an empty sum;
    we use the nearest row left (one neighbour), and a single row left is taken. Equal scores go to the
    lowest index. One distance matrix serves every step."""
    n = len(d2)
    left = list(range(n))
    chosen: list[int] = []
    for _ in range(count):
        r = len(left)
        if r == 1:
            chosen.append(left.pop())
            continue
        sub = d2[np.ix_(left, left)].copy()
        np.fill_diagonal(sub, np.inf)
        k = max(r - f - 2, 1)
        with np.errstate(over="ignore", invalid="ignore"):
            score = np.sort(sub, axis=1)[:, :k].sum(axis=1)
        pick = int(np.argsort(score, kind="stable")[0])
        chosen.append(left.pop(pick))
    return chosen


def bulyan(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Bulyan (El Mhamdi, Guerraoui & Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018), over Krum:

    1. select θ = n − 2f rows S by iterated Krum: θ times, Krum(f) among the r rows left (score: the
       sum of the squared distances to its r − f − 2 nearest rows left, at least one), whose winner is
       removed once selected (see :func:`_iterated_krum`);
    2. per coordinate j, with m_j the coordinate-wise median of the selected values {x_ij : i ∈ S}, average
       the β = θ − 2f of them closest to m_j:  out_j = (1/β) Σ_{i ∈ B_j} x_ij,  B_j = the β values of S
       nearest m_j (ties: the lower position in S).

    Symbols: n rows, f Byzantine rows tolerated, d coordinates. Needs n >= 4f + 3. Cost: one Gram matrix
    (O(n²d)), θ Krum selections on it (O(n³ log n) in all) and a sort of θ values per coordinate
    (O(dθ log θ)); the coordinate stage in float64.
    """
    return bulyan_trusted(x, f=f).point


def bulyan_trusted(x: torch.Tensor, *, f: int) -> AggregateResult:
    """:func:`bulyan` and each row's trust: 0 for a row the Krum stage left out; for a selected row, the
    fraction u_i of coordinates where its value was among the β kept (rows tied with a kept value share
    its use), relative to the fair share β/θ and capped at 1."""
    x = _rows(x, "bulyan")
    n, d = x.shape
    _check_f("bulyan", f, n, 4 * f + 3)
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = _iterated_krum(pairwise_sq_distances(x).cpu().numpy(), f, theta)
    idx = torch.tensor(chosen, device=x.device)
    point, share = nearest_to_median_mean(x, idx, beta)
    used = torch.zeros(n, dtype=torch.float64, device=x.device)
    used[idx] = share
    return AggregateResult(point, _share_trust(used, beta, theta), {"f_used": f})
