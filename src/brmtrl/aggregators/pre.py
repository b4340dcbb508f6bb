"""Pre-aggregation steps that compose with any rule: nearest-neighbour mixing (Allouah et al., AISTATS 2023),
bucketing (Karimireddy, He & Jaggi, ICLR 2022) and adaptive robust clipping (Allouah et al., ICLR 2025).

A step maps the n rows to n' new rows, each a convex combination of the old ones, and returns them with
the row-stochastic mixing matrix M (n', n), x' = M x, so that what a rule says about the new rows (its
trust) can be mapped back to the clients: trust = Mᵀt' / Mᵀ1. A step that only rescales rows (ARC) keeps
row i as client i's: M = I.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .base import _check_f, _check_int, _rows, _safe_norms, combine_rows, largest_f
from . import kernels
from .columns import block_columns, column_blocks
from .gram import _U64, _central_gram, _chunk, _first_centre, _Gram, _sq_distances, pairwise_sq_distances

__all__ = ["PRE_STEPS", "MixedRows", "PreStep", "arc", "arc_count", "bucketing", "nnm"]


_SPARSE = 8      # at most 1/8 of a row of M nonzero (or 2): gathered and summed, not a GEMM


def _mix(m: torch.Tensor, x: torch.Tensor, centre: int | None = None) -> torch.Tensor:
    """x' = M x in x's dtype, one block of columns at a time (each stays in cache; no float64 copy of x).

    A sparse M (bucketing: a few rows per bucket) sums each new row's few rows in float64, term by term
    into one reused block (no (rows, width, block) gather). A dense M (NNM)
    is one GEMM per block in x's precision (at least float32) on the rows centred on a central row x_c,
    x' = x_c + M (x − x_c), exact in exact arithmetic since M's rows sum to 1: its rounding is then
    relative to the rows' spread, not to their size, of the order of the final rounding of x' to x's dtype
    (the float64 sum it replaces). A block that overflows there is redone as a plain float64 GEMM. ``centre``: c (default:
    a row near the bulk, :func:`brmtrl.aggregators.gram._first_centre`)."""
    rows_out, n = m.shape
    d = x.shape[1]
    out = torch.empty(rows_out, d, dtype=x.dtype, device=x.device)
    cols = _chunk(n)
    width = int((m != 0).sum(dim=1).max()) if m.numel() else 0
    if width <= max(2, n // _SPARSE):
        idx = torch.topk(m.abs(), max(width, 1), dim=1).indices.sort(dim=1).values   # in row order
        w = m.gather(1, idx).to(x.device, torch.float64)
        idx = idx.to(x.device)
        small = block_columns(n)                          # float64 blocks of ~2¹⁸ values
        acc = torch.empty(rows_out, min(small, d), dtype=torch.float64, device=x.device)
        term = torch.empty_like(acc)
        for c, block in column_blocks(x, small, torch.float64):
            a, t = acc[:, :block.shape[1]], term[:, :block.shape[1]]
            torch.mul(torch.index_select(block, 0, idx[:, 0], out=a), w[:, :1], out=a)
            for j in range(1, idx.shape[1]):               # the few terms in row order, in float64
                a += torch.mul(torch.index_select(block, 0, idx[:, j], out=t), w[:, j:j + 1], out=t)
            out[:, c:c + block.shape[1]] = a
        return out
    k = _first_centre(x) if centre is None else centre
    work = torch.promote_types(x.dtype, torch.float32)
    mw, m64 = m.to(x.device, work), m.to(x.device)
    mixed = torch.empty(rows_out, min(cols, d), dtype=work, device=x.device)
    for c, xb in column_blocks(x, cols, work):
        w = xb.shape[1]
        centre_row = xb[k].clone()
        block = torch.addmm(centre_row, mw, xb.sub_(centre_row), out=mixed[:, :w])
        if not bool(torch.isfinite(block.sum())):              # an overflow (or a sum that does): redo
            block = m64 @ x[:, c:c + w].to(torch.float64)
        out[:, c:c + w] = block
    return out


class MixedRows:
    """The rows y = M x of a chain of mixing pre-steps (NNM, bucketing), not computed: x (n, d) and the
    row-stochastic M (n', n), float64. What a Gram-based rule needs of y comes from one Gram matrix of x
    about a central row, G (float64 GEMM, whatever x's dtype), with no pass over y:

        <y_i − y_c, y_j − y_c> = (A G Aᵀ)_ij,   A = M − 1 M_c   (rows of A sum to 0, so any centre of x serves),

    with error radii r_i = Σ_l |A_il| ‖x_l − x_k‖ (|ΔG_ij| ≲ γ r_i r_j, carried into the rule's rounding
    certificates); a point Σ α_i y_i = (Mᵀα) x is one GEMV over x. :meth:`rows` computes y when a rule
    needs the rows themselves (its fallbacks), or when x's Gram needed the rescaled overflow pass."""

    def __init__(self, x: torch.Tensor, m: torch.Tensor | None = None, gram: _Gram | None = None) -> None:
        self.x = x
        self.m = torch.eye(x.shape[0], dtype=torch.float64) if m is None else m
        self._gram = gram
        self._rows: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.m.shape[0]

    def mixed(self, m: torch.Tensor) -> "MixedRows":
        """The rows m y (m: (n'', n'), row-stochastic)."""
        return MixedRows(self.x, m.to(torch.float64).cpu() @ self.m, self._gram)

    def x_gram(self) -> _Gram | None:
        """x's Gram about a central row in float64 (once); None if it needed the rescaled pass."""
        if self._gram is None:
            self._gram, _ = _central_gram(self.x, work=torch.float64)
        return None if self._gram.p.any() else self._gram

    def gram_about(self, c: int) -> _Gram | None:
        """The Gram of y about y_c, with its error radii; None where x's Gram cannot give it."""
        gx = self.x_gram()
        if gx is None:
            return None
        m = self.m.numpy()
        a = m - m[c]
        g = a @ gx.g @ a.T
        norms = np.sqrt(np.maximum(np.diagonal(gx.g), 0.0))
        return _Gram(g, np.zeros(self.n, np.int64), c, gx.gamma + 4.0 * (self.x.shape[0] + 2) * _U64,
                     r=np.abs(a) @ norms)

    def sq_distances(self) -> np.ndarray:
        """‖y_i − y_j‖² (n', n') float64: from x's Gram, else from the computed rows."""
        gr = self.gram_about(0)
        return _sq_distances(gr) if gr is not None else pairwise_sq_distances(self.rows()).cpu().numpy()

    def rows(self) -> torch.Tensor:
        """y = M x, computed (once) as the steps themselves would (:func:`brmtrl.aggregators.pre._mix`)."""
        if self._rows is None:
            self._rows = _mix(self.m, self.x)
        return self._rows

    def combine(self, alpha: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ α_i y_i in x's dtype, and its weights on x's rows, Mᵀα (float64)."""
        w = torch.from_numpy(self.m.numpy().T @ alpha).to(self.x.device)
        return combine_rows(self.x, w), w


def nnm(x: torch.Tensor, *, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by
    Mixing", AISTATS 2023): each row is replaced by the mean of its n − f nearest rows, itself included,

        x'_i = (1/(n − f)) Σ_{j ∈ N_i} x_j,   N_i = x_i and the n − f − 1 rows nearest to it,

    with the distances of :func:`pairwise_sq_distances` (exact among the majority whatever the other rows
    hold; ties: the lower index). Symbols: n rows, f Byzantine rows assumed. Needs n >= 2f + 1.
    Returns the n mixed rows (the input's dtype, mixed as :func:`_mix` says) and M (n, n), M_ij = 1/(n − f) for
    j ∈ N_i. Cost: one Gram matrix (O(n²d)) and the mixing GEMM (O(n²d)).
    """
    x = _rows(x, "nnm")
    _check_f("nnm", f, x.shape[0], 2 * f + 1)
    m, centre = _nearest(pairwise_sq_distances(x).cpu(), f)
    return _mix(m, x, centre), m


def _nearest(d2: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
    """NNM's mixing matrix from the squared distances (n, n), and the medoid (the row nearest the others)."""
    n = d2.shape[0]
    d2 = d2.clone()
    centre = int(torch.argmin(d2.median(dim=1).values))
    d2.fill_diagonal_(-1.0)                                    # itself first, whatever duplicates there are
    near = torch.argsort(d2, dim=1, stable=True)[:, :n - f]
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_(1, near, 1.0 / (n - f))
    return m, centre


def nnm_mixing(rows: MixedRows, *, f: int) -> torch.Tensor:
    """:func:`nnm`'s mixing matrix for the (uncomputed) rows of :class:`MixedRows`, from their distances."""
    _check_f("nnm", f, rows.n, 2 * f + 1)
    return _nearest(torch.from_numpy(rows.sq_distances()), f)[0]


def bucketing_mixing(rows: MixedRows, *, bucket_size: int = 2,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`bucketing`'s mixing matrix for the (uncomputed) rows of :class:`MixedRows`."""
    return _buckets(rows.n, bucket_size, generator)


def bucketing(x: torch.Tensor, *, bucket_size: int = 2,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucketing (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022): shuffle the rows with a random permutation π, cut them into ⌈n/s⌉ buckets of
    s = ``bucket_size`` consecutive rows (the last bucket may be smaller) and average each bucket,

        x'_b = (1/|B_b|) Σ_{i ∈ B_b} x_i,   B_b = {π(bs), …, π(bs + s − 1)} ∩ [0, n).

    The permutation is drawn with ``generator`` (a CPU ``torch.Generator``; None: torch's global one),
    so the same seeded generator gives the same buckets. Each Byzantine row spoils at most one bucket:
    the rule after it sees at most f bad rows among ⌈n/s⌉ less heterogeneous ones. Returns the bucket
    means (the input's dtype, summed in float64) and M (⌈n/s⌉, n), M_bi = 1/|B_b| for i ∈ B_b.
    ``bucket_size = 1`` only permutes the rows.
    """
    x = _rows(x, "bucketing")
    m = _buckets(x.shape[0], bucket_size, generator)
    return _mix(m, x), m


def _buckets(n: int, bucket_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Bucketing's mixing matrix (⌈n/s⌉, n) for a permutation drawn with ``generator``."""
    s = _check_int("bucketing", "bucket_size", bucket_size, 1)
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise ValueError(f"bucketing: generator must be a CPU torch.Generator or None. Got {generator!r} instead.")
    perm = torch.randperm(n, generator=generator)
    bucket = torch.arange(n) // s
    sizes = torch.bincount(bucket).to(torch.float64)
    m = torch.zeros(len(sizes), n, dtype=torch.float64)
    m[bucket, perm] = 1.0 / sizes[bucket]
    return m


def arc_count(n: int, f: int) -> int:
    """How many rows ARC clips among n with f assumed Byzantine: k = ⌊2 (f/n) (n − f)⌋."""
    return int(math.floor(2 * f * (n - f) / n)) if n else 0


def arc(x: torch.Tensor, *, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive robust clipping (Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan, "Boosting Robustness
    by Clipping Gradients in Distributed Learning", ICLR 2025, arXiv 2405.14432): with k = ⌊2(f/n)(n − f)⌋,
    the k rows of largest norm are scaled down to the norm of the (k + 1)-th largest,

        x'_i = x_i · min(1, C / ‖x_i‖),   C = ‖x_(k+1)‖ (norms in decreasing order),

    and the others are left as they are (ties: the lower index is kept). Needs f < n/2 (k < n); with f = 0
    it changes nothing. Returns the n rows (the input's dtype; norms in float64) and M = I (each row stays
    its client's). Cost: one pass over the rows for the norms (float64 column blocks), then one pass that
    copies them, the k clipped rows scaled in float64 in the same column blocks.
    """
    x = _rows(x, "arc")
    n = x.shape[0]
    _check_f("arc", f, n, 2 * f + 1)
    eye = torch.eye(n, dtype=torch.float64)
    k = arc_count(n, f)
    if k == 0:
        return x, eye
    if kernels.usable(x):
        ssq = kernels.row_sq_norms(x)                           # one compiled pass, no float64 copy
    else:
        ssq = torch.zeros(n, dtype=torch.float64, device=x.device)
        for _, block in column_blocks(x, _chunk(n), torch.float64):    # float64 column blocks, in cache
            ssq += torch.linalg.vector_norm(block, dim=1) ** 2
    norms = ssq.sqrt().cpu()
    if not bool(torch.isfinite(norms).all()):                # squares beyond float64's range
        norms = _safe_norms(x.to(torch.float64)).cpu()
    order = torch.argsort(-norms, stable=True)
    bound = norms[order[k]]
    clip = order[:k]
    scale = torch.where(norms[clip] > bound, bound / norms[clip].clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    if kernels.usable(x):                                     # one compiled pass, the same values
        every = torch.ones(n, dtype=torch.float64)
        every[clip] = scale
        return kernels.scale_rows(x, every), eye
    clip, scale = clip.to(x.device), scale.to(x.device)[:, None]
    out = torch.empty_like(x)
    cols = _chunk(n)
    buf = torch.empty(len(clip), min(cols, x.shape[1]), dtype=torch.float64, device=x.device)
    for c in range(0, x.shape[1], cols):                      # one pass: each block copied, its clipped
        block = out[:, c:c + cols]                            # rows scaled in float64 while in cache
        block.copy_(x[:, c:c + cols])
        scaled = buf[:, :block.shape[1]]
        scaled.copy_(block[clip]).mul_(scale)
        block[clip] = scaled.to(x.dtype)
    return out, eye


@dataclass(frozen=True)
class PreStep:
    """A registry entry: the step, the ``aggregator.*`` config keys it takes, whether it draws random
    numbers (then it gets the ``generator``), the fewest rows it needs for a given f, and the number of
    rows it returns for n rows and its parameters."""

    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    params: tuple[str, ...] = ()
    random: bool = False
    min_rows: Callable[[int], int] | None = None
    rows_out: Callable[..., int] = lambda n, **_: n
    #: the step's mixing matrix alone, for rows not computed (:class:`MixedRows`), same keywords as ``fn``;
    #: None: the step needs the rows themselves
    mixing: Callable[..., torch.Tensor] | None = None
    #: ``mixing`` reads the rows' distances: the one Gram of x then serves the step and a Gram-based rule
    #: after it, and the chain runs on :class:`MixedRows` (without such a step, computing the few mixed
    #: rows costs less than x's Gram)
    reads_distances: bool = False

    def largest_f(self, n: int) -> int:
        """The largest f this step tolerates among n rows."""
        return largest_f(self.min_rows, n)


#: config name (``aggregator.pre``) -> step
PRE_STEPS: dict[str, PreStep] = {
    "bucketing": PreStep(bucketing, ("bucket_size",), random=True,
                         rows_out=lambda n, bucket_size=2, **_: -(-n // bucket_size), mixing=bucketing_mixing),
    "nnm": PreStep(nnm, ("f",), min_rows=lambda f: 2 * f + 1, mixing=nnm_mixing, reads_distances=True),
    "arc": PreStep(arc, ("f",), min_rows=lambda f: 2 * f + 1),
}
