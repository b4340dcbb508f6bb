"""The server's side of a round, the one implementation every engine calls.

:func:`server_step` takes the updates the round's clients sent (one flat delta of the shared part
each, as received: anything may arrive) and who sent them; it screens them (:func:`screen`: not a
floating-point tensor, wrong size, non-finite values, a norm that overflows or exceeds
``aggregator.max_norm``), combines the accepted ones with the configured robust rule in float64
(:func:`aggregate`: the ``aggregator.pre`` steps, then the rule, through
:func:`brmtrl.aggregators.aggregate`) and returns the step for φ with a record of the round: who was
accepted, who was rejected and why, what the rule reported, how much it trusted each accepted client
(``info["trust"]``) and which accepted clients it flagged (``info["flagged"]``: trust below
:data:`brmtrl.aggregators.FLAG_BELOW`). Sample counts are never used: a Byzantine client could
report any. The built-in simulation and the Flower ``ServerApp`` (:mod:`brmtrl.flower`) both call it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import aggregators as agg_mod
from .config import ConfigError
from .device import for_aggregation
from .reputation import Reputation

__all__ = ["Aggregation", "StepResult", "UpdatesHook", "aggregate", "hypergeometric_quantile", "pre_generator",
           "screen", "server_step"]

#: a step run on the round's updates before the server step receives them: (the updates as sent, their
#: senders, the round) -> the updates the server step receives. The simulated omniscient adversary
#: (:mod:`brmtrl.adversary`) is one; a real federation has none.
UpdatesHook = Callable[[Sequence[Any], Sequence[Any], int], list[Any]]

log = logging.getLogger("brmtrl")


@dataclass(frozen=True)
class Aggregation:
    """The configured rule: its name, the f it assumes per round, its other keyword arguments (and the
    pre-aggregation steps'), the largest update norm accepted (0: no limit beyond finiteness) and the
    pre-aggregation steps, in order."""

    name: str
    f: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    max_norm: float = 0.0
    pre: tuple[str, ...] = ()
    max_norm_ratio: float = 0.0
    history: bool = False

    def rows_after_pre(self, n: int) -> int:
        """How many rows the rule sees when n updates are accepted (bucketing: ⌈n / bucket_size⌉)."""
        return agg_mod.rows_after(self.pre, n, **self.params)

    def largest_f(self, n: int) -> int:
        """The largest f that the steps and the rule that take f tolerate with n accepted updates
        (n itself when none takes f)."""
        limit = n
        for name in self.pre:
            step = agg_mod.resolve_pre_step(name)
            if "f" in step.params:
                limit = min(limit, step.largest_f(n))
            n = step.rows_out(n, **{k: self.params[k] for k in step.params if k in self.params})
        rule = agg_mod.resolve_rule(self.name)
        return min(limit, rule.largest_f(n)) if "f" in rule.params else limit

    @property
    def uses_f(self) -> bool:
        return "f" in agg_mod.resolve_rule(self.name).params or any("f" in agg_mod.resolve_pre_step(p).params for p in self.pre)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], per_round: int, pool: int) -> "Aggregation":
        """The rule the server's settings declare, for ``per_round`` clients sampled from ``pool``.

        ``aggregator.f = 'auto'``: the server assumes that ``aggregator.byzantine_fraction`` of the
        population (round(fraction · pool) clients) may be Byzantine; the number of them among the
        ``per_round`` sampled then follows a hypergeometric law, and 'auto' takes its
        ``aggregator.f_quantile`` quantile (default 0.9999), so that the assumed f is exceeded in at most
        1 round in 10,000 (the expected count is exceeded in about a third; the 95th percentile in up to
        1 round in 20, and one such round can wreck an f-based rule such as NNM: docs/robustness.md).
        This is a declared assumption: nothing here reads the simulated attack (``attack.*``) or a
        node's role, which a real federation does not know; ``cfg`` is the server's view
        (:func:`brmtrl.config.server_view`). An f the rule (or a pre-aggregation step) cannot tolerate
        with ``per_round`` rows is lowered to the largest it can, with a warning (``'auto'``), or is a
        config error (an explicit value). With ``aggregator.pre``, the rule's needs apply to the rows it
        sees after the steps."""
        name = cfg["aggregator.name"]
        rule = agg_mod.resolve_rule(name)
        pre = tuple(cfg.get("aggregator.pre", ()))
        keys = set(rule.params).union(*(agg_mod.resolve_pre_step(p).params for p in pre))
        # f is resolved below; centre is the server's state (the previous aggregate), not a config value
        # built-in keys (aggregator.tol, ...), and a plugged-in rule's own (aggregator.params.<name>; when
        # unset, its default applies)
        params = {k: cfg[f"aggregator.{k}"] if f"aggregator.{k}" in cfg else cfg[f"aggregator.params.{k}"]
                  for k in sorted(keys) if k not in ("f", "centre")
                  and (f"aggregator.{k}" in cfg or f"aggregator.params.{k}" in cfg)}
        agg = cls(name, 0, params, float(cfg["aggregator.max_norm"]), pre,
                  float(cfg.get("aggregator.max_norm_ratio", 0.0)), cfg.get("aggregator.centre") == "previous")
        rows = agg.rows_after_pre(per_round)
        if rule.min_rows is not None and rows < rule.min_rows(0):
            after = f" ({rows} after aggregator.pre = {list(pre)})" if pre else ""
            raise ConfigError(f"config key 'aggregator.name' = {name!r} needs at least {rule.min_rows(0)} clients "
                              f"per round, but train.participation samples {per_round}{after}; raise "
                              "train.participation")
        f = cfg["aggregator.f"]
        largest = agg.largest_f(per_round)
        if f == "auto":
            assumed = int(round(float(cfg.get("aggregator.byzantine_fraction", 0.2)) * pool))
            f = hypergeometric_quantile(float(cfg.get("aggregator.f_quantile", 0.9999)), pool, assumed, per_round)
            if f > largest:
                log.warning("aggregator.f='auto' gives f=%d, more than %s tolerates with %d clients per round; "
                            "it assumes f=%d", f, agg.describe(), per_round, largest)
                f = largest
        elif f > largest and agg.uses_f:
            raise ConfigError(
                f"config key 'aggregator.f' = {f} is too large for {agg.describe()} with {per_round} clients sampled "
                f"per round (it tolerates f <= {largest}); lower aggregator.f or raise train.participation")
        return cls(name, int(f), params, agg.max_norm, pre, agg.max_norm_ratio, agg.history)

    def describe(self) -> str:
        """The rule with its pre-aggregation steps, e.g. ``nnm + bucketing + centered_clipping``."""
        return " + ".join([*self.pre, self.name])


def hypergeometric_quantile(q: float, pool: int, marked: int, draws: int) -> int:
    """The smallest k with P(X <= k) >= q, X the marked items among ``draws`` drawn without
    replacement from ``pool`` items of which ``marked`` are marked."""
    total = math.comb(pool, draws)
    acc = 0.0
    for k in range(0, min(marked, draws) + 1):
        acc += math.comb(marked, k) * math.comb(pool - marked, draws - k) / total
        if acc >= q - 1e-12:
            return k
    return min(marked, draws)


@dataclass
class StepResult:
    """The server step's outcome: ``step`` (None when φ stays unchanged this round), the clients
    accepted and rejected (``{"client", "reason"}``), and what the rule reported in ``info``."""

    step: torch.Tensor | None
    accepted: list[Any]
    rejected: list[dict[str, Any]]
    info: dict[str, Any]


def _reason(update: Any, size: int, max_norm: float) -> str | None:
    """Why ``update`` cannot be aggregated, or None when it can."""
    if not isinstance(update, torch.Tensor):
        return f"update is a {type(update).__name__}, not a tensor"
    if not update.is_floating_point():
        return f"update has dtype {update.dtype}; a floating-point tensor is expected"
    if update.dim() != 1 or update.numel() != size:
        return f"update has shape {tuple(update.shape)}; a flat vector of {size} values is expected"
    if not bool(torch.isfinite(update).all()):
        return "update has non-finite values"
    norm = float(torch.linalg.vector_norm(update.to(torch.float64)))
    if not math.isfinite(norm):
        return "update norm overflows float64"
    if max_norm and norm > max_norm:
        return f"update norm {norm:.3g} exceeds aggregator.max_norm = {max_norm:g}"
    return None


def screen(updates: Sequence[Any], clients: Sequence[Any], *, size: int, max_norm: float = 0.0,
           max_norm_ratio: float = 0.0) -> tuple[list[int], list[dict[str, Any]]]:
    """Check every update before anything is stacked: the positions of the acceptable ones, and a
    ``{"client", "reason"}`` entry for each rejected one. Checked in order: a floating-point tensor, a
    flat vector of ``size`` values, finite values, a norm that fits float64 and is at most
    ``max_norm`` (0: no limit), then, among those left, a norm at most ``max_norm_ratio`` times their
    median norm (0: no limit; the median, not the mean, so that fewer than half the clients cannot
    move the bar)."""
    kept, rejected = [], []
    for i, (u, c) in enumerate(zip(updates, clients)):
        why = _reason(u, size, max_norm)
        if why is None:
            kept.append(i)
        else:
            rejected.append({"client": c, "reason": why})
    if max_norm_ratio and len(kept) > 1:
        norms = [float(torch.linalg.vector_norm(updates[i].to(torch.float64))) for i in kept]
        bar = max_norm_ratio * float(np.median(norms))
        if bar > 0:
            out = [(i, nrm) for i, nrm in zip(kept, norms) if nrm > bar]
            for i, nrm in out:
                rejected.append({"client": clients[i], "reason": f"update norm {nrm:.3g} exceeds aggregator.max_norm_ratio "
                                 f"= {max_norm_ratio:g} x the round's median norm {bar / max_norm_ratio:.3g}"})
            drop = {i for i, _ in out}
            kept = [i for i in kept if i not in drop]
    return kept, rejected


def pre_generator(seed: int, round_: int) -> torch.Generator:
    """The CPU generator of the random pre-aggregation steps (bucketing) in round ``round_``: a function of
    the run's seed and the round only, so a resumed run, or another engine, draws the same buckets."""
    state = np.random.SeedSequence([int(seed), int(round_), 0xB0C4]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def aggregate(x: torch.Tensor, agg: Aggregation, *, generator: torch.Generator | None = None,
              centre: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Combine the stacked accepted updates ``x`` (n, d) with the pre-aggregation steps and the rule
    (:func:`brmtrl.aggregators.aggregate`), in float64. f is lowered to what the steps and the rule
    tolerate among the n rows that are left (rows may have been rejected). ``info["trust"]`` holds each
    row's trust (floats in [0, 1], the rows' order). ``centre``: where centered clipping starts (with
    ``aggregator.centre = 'previous'``, the previous round's aggregate; None: the rule's default)."""
    x = x.to(torch.float64)
    n = x.shape[0]
    info: dict[str, Any] = {}
    kwargs: dict[str, Any] = dict(agg.params)
    if agg.uses_f:
        kwargs["f"] = min(agg.f, agg.largest_f(n))
        info["f_used"] = kwargs["f"]
    if "m" in kwargs:
        kwargs["m"] = min(kwargs["m"], agg.rows_after_pre(n)) or None
    if centre is not None and agg.history:
        kwargs["centre"] = centre.to(device=x.device, dtype=torch.float64)
    res = agg_mod.aggregate(agg.name, x, pre=agg.pre, generator=generator, **kwargs)
    info.update({k: v for k, v in res.info.items() if k != "f_used"})
    info["trust"] = [float(t) for t in res.trust.cpu()]
    return res.point, info


def server_step(updates: Sequence[Any], clients: Sequence[Any], agg: Aggregation, *, size: int,
                round_: int = 0, seed: int = 0, centre: torch.Tensor | None = None,
                reputation: Reputation | None = None) -> StepResult:
    """Screen, aggregate: the server's whole step, from what arrived and who sent it.

    It takes the server's declared settings (``agg``) and nothing a simulation knows: which clients are
    Byzantine, or what they do, never reaches it (a simulated omniscient adversary rewrites its rows
    before this step receives them: :mod:`brmtrl.adversary`). Returns the step to add to φ, or None
    when too few valid updates are left for the rule (φ is then left unchanged and the round's record
    says why). Rejections are logged with the client and reason. ``info["trust"]`` lists the rule's
    trust in each accepted client (``accepted``'s order) and ``info["flagged"]`` the accepted clients
    trusted less than :data:`brmtrl.aggregators.FLAG_BELOW`. Random pre-aggregation steps draw from
    :func:`pre_generator` (``seed``, ``round_``). ``centre``: the previous round's aggregate, for a rule
    that starts from it (``aggregator.centre = 'previous'``). ``reputation``: the server's reputation
    across rounds (:mod:`brmtrl.reputation`): the updates of the clients it excluded are rejected before
    screening, and the round's flags are booked in it (``info["reputation_new"]``: the clients it
    excluded this round, ``info["reputation_excluded"]``: how many senders were already excluded).
    """
    updates = [for_aggregation(u) for u in updates]   # float64 work: MPS updates are combined on the CPU
    out = reputation.excluded_among(clients) if reputation is not None else set()
    judged = [i for i, c in enumerate(clients) if c not in out]
    kept, rejected = screen([updates[i] for i in judged], [clients[i] for i in judged], size=size,
                            max_norm=agg.max_norm, max_norm_ratio=agg.max_norm_ratio)
    kept = [judged[i] for i in kept]
    for entry in rejected:
        log.warning("round %d: rejected the update of client %s (%s)", round_, entry["client"], entry["reason"])
    rejected += [{"client": c, "reason": "excluded by reputation (flagged persistently)"} for c in clients if c in out]
    accepted = [clients[i] for i in kept]
    info: dict[str, Any] = {"aggregator": agg.name, "f_assumed": agg.f, "updates_received": len(updates),
                            "updates_accepted": len(kept)}
    result = _step(updates, kept, accepted, rejected, info, agg, round_=round_, seed=seed, centre=centre)
    if reputation is not None:   # the round's flags: screening's rejections and the rule's distrust
        flagged = [e["client"] for e in rejected if e["client"] not in out] + list(result.info.get("flagged", []))
        result.info.update(reputation_excluded=len(out),
                           reputation_new=reputation.observe(round_, [clients[i] for i in judged], flagged))
    return result


def _step(updates: Sequence[torch.Tensor], kept: list[int], accepted: list[Any], rejected: list[dict[str, Any]],
          info: dict[str, Any], agg: Aggregation, *, round_: int, seed: int,
          centre: torch.Tensor | None) -> StepResult:
    """The server step's aggregation of the accepted rows ``kept`` (screening done)."""
    if not kept:
        info["skipped"] = "no valid update"
        return StepResult(None, accepted, rejected, info)
    x = torch.stack([updates[i].to(torch.float64) for i in kept])
    rule = agg_mod.resolve_rule(agg.name)
    if rule.min_rows is not None and agg.rows_after_pre(len(kept)) < rule.min_rows(0):
        log.warning("round %d: only %d valid updates, fewer than %s needs; φ is left unchanged this round",
                    round_, len(kept), agg.describe())
        info["skipped"] = f"{len(kept)} valid updates, fewer than {agg.describe()} needs ({rule.min_rows(0)})"
        return StepResult(None, accepted, rejected, info)
    gen = pre_generator(seed, round_) if any(agg_mod.resolve_pre_step(p).random for p in agg.pre) else None
    step, rule_info = aggregate(x, agg, generator=gen, centre=centre)
    info.update(rule_info)
    info["flagged"] = [c for c, t in zip(accepted, info["trust"]) if t < agg_mod.FLAG_BELOW]
    return StepResult(step, accepted, rejected, info)
