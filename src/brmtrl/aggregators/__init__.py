"""Robust aggregation rules: pure functions on a stacked ``(n, d)`` tensor, one row per client.

Every rule takes the rows as a 2-D tensor and returns a 1-D tensor of length ``d`` in the input's
dtype; hyperparameters are keyword-only. Distances come from one Gram matrix of the rows centred on a
central row (never on the mean, which one row can move anywhere), accumulated in float64, so that
``d = 10⁶`` costs one GEMM and the rest is O(n²); rows of any finite size, up to float64's range, are
handled (see :func:`pairwise_sq_distances` and :func:`geometric_median_result`). No rule takes sample
counts: a Byzantine client could report any count.

:func:`aggregate` is the one entry point the server uses: pre-aggregation steps (:data:`PRE_STEPS`), then
the rule, with each input row's *trust* (:class:`AggregateResult`).

One module per family: :mod:`.base` (input checks, :class:`Rule`, :class:`AggregateResult`), :mod:`.gram`
(pairwise distances), :mod:`.geometric_median`, :mod:`.krum` (Krum, Multi-Krum, Bulyan), :mod:`.averages`
(mean, median, trimmed mean), :mod:`.clipping` (centered clipping), :mod:`.pre` (NNM, bucketing).

>>> import torch
>>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [100.0, 100.0]])
>>> krum(x, f=1)
tensor([0.2000, 0.2000])
>>> mean(x)
tensor([20.2400, 20.2400])
>>> geometric_median(x).round(decimals=2)
tensor([0.2100, 0.2100])
>>> res = aggregate("krum", x, f=1)
>>> res.trust
tensor([0., 0., 0., 1., 0.], dtype=torch.float64)
>>> aggregate("geometric_median", x).flagged
tensor([False, False, False, False,  True])
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .averages import mean, mean_trusted, median, median_trusted, trimmed_mean, trimmed_mean_trusted
from ..plugin import keyword_parameters, positional_arity, resolve_registered
from .base import FLAG_BELOW, AggregateResult, Rule, _rows
from .clipping import centered_clipping, centered_clipping_trusted
from .geometric_median import (GeometricMedianResult, geometric_median, geometric_median_mixed,
                               geometric_median_mixed_trusted, geometric_median_result, geometric_median_trust,
                               geometric_median_trusted, weiszfeld_reference)
from .gram import pairwise_sq_distances
from .krum import bulyan, bulyan_trusted, krum, krum_scores, krum_trusted, multi_krum, multi_krum_trusted
from .pre import PRE_STEPS, MixedRows, PreStep, arc, arc_count, bucketing, nnm

__all__ = [
    "AGGREGATORS",
    "FLAG_BELOW",
    "PRE_STEPS",
    "AggregateResult",
    "arc",
    "arc_count",
    "GeometricMedianResult",
    "MixedRows",
    "PreStep",
    "Rule",
    "aggregate",
    "bucketing",
    "bulyan",
    "bulyan_trusted",
    "centered_clipping",
    "centered_clipping_trusted",
    "geometric_median",
    "geometric_median_mixed",
    "geometric_median_result",
    "geometric_median_trust",
    "geometric_median_trusted",
    "krum",
    "krum_scores",
    "krum_trusted",
    "mean",
    "mean_trusted",
    "median",
    "median_trusted",
    "multi_krum",
    "multi_krum_trusted",
    "nnm",
    "pairwise_sq_distances",
    "register_aggregator",
    "register_pre_step",
    "resolve_pre_step",
    "resolve_rule",
    "rows_after",
    "trimmed_mean",
    "trimmed_mean_trusted",
    "weiszfeld_reference",
]

#: config name -> rule
AGGREGATORS: dict[str, Rule] = {
    "mean": Rule(mean, result=mean_trusted),
    "median": Rule(median, result=median_trusted),
    "trimmed_mean": Rule(trimmed_mean, ("f",), lambda f: 2 * f + 1, trimmed_mean_trusted),
    "geometric_median": Rule(geometric_median, ("tol", "max_iter", "eps"), result=geometric_median_trusted,
                             mixed=geometric_median_mixed_trusted),
    "krum": Rule(krum, ("f",), lambda f: 2 * f + 3, krum_trusted),
    "multi_krum": Rule(multi_krum, ("f", "m"), lambda f: 2 * f + 3, multi_krum_trusted),
    "bulyan": Rule(bulyan, ("f",), lambda f: 4 * f + 3, bulyan_trusted),
    "centered_clipping": Rule(centered_clipping, ("tau", "iters", "centre"), result=centered_clipping_trusted),
}


def register_aggregator(name: str, fn: Callable[..., torch.Tensor], *, params: Sequence[str] = (),
                        min_rows: Callable[[int], int] | None = None,
                        result: Callable[..., AggregateResult] | None = None,
                        mixed: Callable[..., AggregateResult] | None = None) -> Rule:
    """Add a rule to :data:`AGGREGATORS` under ``name`` (a config's ``aggregator.name``).

    ``fn(x, **params)`` takes the stacked updates x (n, d) and returns the aggregate (d,); ``params`` are
    the keywords the server passes (``"f"``: the f it assumes, lowered to what ``min_rows`` allows);
    ``min_rows(f)`` the fewest rows the rule needs; ``result`` the same rule returning an
    :class:`AggregateResult` with each row's trust (without it every accepted row has trust 1); ``mixed``
    (optional) the same as ``result`` for the uncomputed rows of NNM and other mixing steps, a
    :class:`MixedRows` (a rule that needs only their Gram matrix and one combination of them)."""
    rule = Rule(fn, tuple(params), min_rows, result if result is not None else _plain_result(name, fn), mixed)
    AGGREGATORS[name] = rule
    return rule


def _plain_result(name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., AggregateResult]:
    def result(x: torch.Tensor, **kwargs: Any) -> AggregateResult:
        point = fn(x, **kwargs)
        if not isinstance(point, torch.Tensor) or tuple(point.shape) != (x.shape[1],):
            got = tuple(point.shape) if isinstance(point, torch.Tensor) else type(point).__name__
            raise ValueError(f"aggregator {name!r} returned {got}; a tensor of shape ({x.shape[1]},) is expected")
        return AggregateResult(point.to(device=x.device, dtype=x.dtype),
                               torch.ones(x.shape[0], dtype=torch.float64, device=x.device))

    return result


def resolve_rule(name: str) -> Rule:
    """The rule registered as ``name``; a ``"package.module:function"`` name is imported and registered
    the first time (a function taking ``f`` gets the server's f; importing the module may register a
    richer entry under that name itself, with :func:`register_aggregator`). Unknown names and unusable
    functions raise :class:`ValueError` (:class:`brmtrl.plugin.PluginError`)."""
    def build(fn: Callable[..., torch.Tensor]) -> Rule:
        accepted = positional_arity(fn, name, keywords=("f",))
        optional = keyword_parameters(fn) - {"f"}   # settable with aggregator.params.<name>
        return register_aggregator(name, fn, params=tuple(sorted(accepted | optional)))

    return resolve_registered(AGGREGATORS, name, build, lambda: _unknown("rule", name, list(AGGREGATORS)))


def _unknown(kind: str, name: Any, known: Sequence[str]) -> ValueError:
    return ValueError(f"aggregate: unknown {kind} {name!r}; expected one of {', '.join(map(repr, sorted(known)))}")


def register_pre_step(name: str, fn: Callable[..., Any], *, params: Sequence[str] = (), random: bool = False,
                      min_rows: Callable[[int], int] | None = None,
                      rows_out: Callable[..., int] | None = None,
                      mixing: Callable[..., torch.Tensor] | None = None, reads_distances: bool = False) -> PreStep:
    """Add a pre-aggregation step to :data:`PRE_STEPS` under ``name`` (an entry of ``aggregator.pre``).

    ``fn(x, **params)`` takes the stacked updates x (n, d) and returns either the new rows (n, d), one per
    input row (a step that rescales or clips rows: row i stays client i's), or ``(rows (n', d), M (n', n))``
    with M the row-stochastic mixing matrix (x' = M x), through which the rule's trust is mapped back to the
    clients. ``params``: the keywords the server passes (``"f"``: the f it assumes, and the names set with
    ``aggregator.params.<name>``); ``random``: the step draws random numbers (it gets ``generator``, a CPU
    ``torch.Generator``); ``min_rows(f)``: the fewest rows it needs; ``rows_out(n, **params)``: how many rows
    it returns (default n); ``mixing(rows, **params)`` (optional): its mixing matrix alone for the uncomputed
    rows of a :class:`MixedRows`, and ``reads_distances``: it reads their distances (``rows.sq_distances()``),
    so that a chain with it runs on one Gram matrix of the updates before a rule that takes ``mixed``."""
    step = PreStep(_with_mixing(name, fn), tuple(params), random, min_rows,
                   rows_out if rows_out is not None else (lambda n, **_: n), mixing, reads_distances)
    PRE_STEPS[name] = step
    return step


def _with_mixing(name: str, fn: Callable[..., Any]) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``fn`` returning (rows, M); a step that returns only rows (n, d) maps row i to row i (M = I)."""
    def step(x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = fn(x, **kwargs)
        rows, mix = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
        if not isinstance(rows, torch.Tensor) or rows.ndim != 2 or rows.shape[1] != x.shape[1]:
            got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise ValueError(f"pre-aggregation step {name!r} returned {got}; rows of shape (n', {x.shape[1]}) "
                             "are expected")
        if mix is None:
            if rows.shape[0] != x.shape[0]:
                raise ValueError(f"pre-aggregation step {name!r} returned {rows.shape[0]} rows from {x.shape[0]} "
                                 "without its mixing matrix; return (rows, M) with M of shape (rows, n)")
            mix = torch.eye(x.shape[0], dtype=torch.float64)
        mix = torch.as_tensor(mix, dtype=torch.float64).cpu()
        if tuple(mix.shape) != (rows.shape[0], x.shape[0]):
            raise ValueError(f"pre-aggregation step {name!r} returned a mixing matrix of shape {tuple(mix.shape)}; "
                             f"({rows.shape[0]}, {x.shape[0]}) is expected")
        return rows.to(device=x.device, dtype=x.dtype), mix

    return step


def resolve_pre_step(name: str) -> PreStep:
    """The pre-aggregation step registered as ``name``; a ``"package.module:function"`` name is imported and
    registered the first time (a function taking ``f`` gets the server's f, one taking ``generator`` the
    round's generator; its other parameters need defaults and are set with ``aggregator.params.<name>``).
    Importing the module may instead register a richer entry under that name (:func:`register_pre_step`)."""
    def build(fn: Callable[..., Any]) -> PreStep:
        accepted = positional_arity(fn, name, keywords=("f", "generator"))
        optional = keyword_parameters(fn) - {"f", "generator"}
        return register_pre_step(name, fn, params=tuple(sorted((accepted - {"generator"}) | optional)),
                                 random="generator" in accepted)

    return resolve_registered(PRE_STEPS, name, build, lambda: _unknown("pre-aggregation step", name, list(PRE_STEPS)))


def rows_after(pre: Sequence[str], n: int, **params: Any) -> int:
    """How many rows the rule sees after the ``pre`` steps, from n rows (bucketing: ⌈n/s⌉)."""
    for name in pre:
        step = resolve_pre_step(name)
        n = step.rows_out(n, **{k: params[k] for k in step.params if k in params})
    return n


def aggregate(name: str, x: torch.Tensor, *, pre: Sequence[str] = (), generator: torch.Generator | None = None,
              **params: Any) -> AggregateResult:
    """Run the ``pre`` steps in order (:data:`PRE_STEPS`), then the rule ``name`` (:data:`AGGREGATORS`),
    and map the rule's trust back to the input rows.

    ``params`` are the steps' and the rule's keyword arguments (``f`` goes to every one that takes it);
    one that none of them takes is an error. ``generator`` is the CPU ``torch.Generator`` of the random
    steps (bucketing). With M = M_k ⋯ M_1 the product of the steps' row-stochastic mixing matrices
    (x' = M x) and t' the rule's trust of the rows it saw, the trust of input row i is

        trust_i = (Mᵀ t')_i / (Mᵀ 1)_i,

    the trust of the mixed rows it went into, weighted by how much of it went into each. Returns an
    :class:`AggregateResult` with the point, the trust (n,) of the input rows, and ``info`` (the rule's,
    plus ``rows_aggregated`` when a step changed the rows).
    """
    rule = resolve_rule(name)
    if isinstance(pre, str):
        raise ValueError(f"aggregate: pre must be a sequence of step names. Got the string {pre!r} instead.")
    rows = _rows(x, name)
    n = rows.shape[0]
    steps = [resolve_pre_step(step_name) for step_name in pre]
    used: set[str] = set()
    step_kwargs = []
    for step in steps:
        kwargs = {k: params[k] for k in step.params if k in params}
        used.update(kwargs)
        if step.random:
            kwargs["generator"] = generator
        step_kwargs.append(kwargs)
    kwargs = {k: params[k] for k in rule.params if k in params}
    used.update(kwargs)
    extra = sorted(set(params) - used)
    if extra:
        raise TypeError(f"aggregate: {name} with pre={list(pre)} takes no parameter {extra[0]!r} "
                        f"(it takes {', '.join(map(repr, rule.params)) or 'none'})")
    if (rule.mixed is not None and any(step.reads_distances for step in steps)
            and all(step.mixing is not None for step in steps)):
        # NNM (and mixing steps) before a Gram-based rule: the mixed rows are never computed (MixedRows)
        view = MixedRows(rows)
        for step_name, step, skw in zip(pre, steps, step_kwargs):
            assert step.mixing is not None
            m = torch.as_tensor(step.mixing(view, **skw), dtype=torch.float64).cpu()
            if m.ndim != 2 or m.shape[1] != view.n:
                raise ValueError(f"pre-aggregation step {step_name!r} returned a mixing matrix of shape "
                                 f"{tuple(m.shape)} for {view.n} rows; (rows, {view.n}) is expected")
            view = view.mixed(m)
        res, mix = rule.mixed(view, **kwargs), view.m
        rows_seen = view.n
    else:
        mix = None
        for step, skw in zip(steps, step_kwargs):
            rows, m = step.fn(rows, **skw)
            mix = m if mix is None else m @ mix
        assert rule.result is not None
        res = rule.result(rows, **kwargs)
        rows_seen = rows.shape[0]
    if mix is None:
        return res
    t = res.trust.to(torch.float64).cpu()
    share = mix.sum(dim=0)
    trust = torch.where(share > 0, (mix.T @ t) / torch.where(share > 0, share, 1.0), torch.zeros(n, dtype=torch.float64))
    return AggregateResult(res.point.to(device=x.device, dtype=x.dtype), trust.clamp(0.0, 1.0).to(x.device),
                           {**res.info, "rows_aggregated": rows_seen})
