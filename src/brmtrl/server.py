"""The server's side of a round, the one implementation every engine calls.

:func:`server_step` takes the updates the round's clients sent (one flat delta of the shared part
each, as received: anything may arrive) and who sent them; it screens them (:func:`screen`: not a
floating-point tensor, wrong size, non-finite values, a norm that overflows or exceeds
``aggregator.max_norm``), combines the accepted ones with the configured robust rule in float64
(:func:`aggregate`) and returns the step for φ with a record of the round: who was accepted, who was
rejected and why, and what the rule reported. Sample counts are never used: a Byzantine client could
report any. The built-in simulation and the Flower ``ServerApp`` (:mod:`brmtrl.flower`) both call it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from . import aggregators as agg_mod
from .config import ConfigError

__all__ = ["Aggregation", "StepResult", "aggregate", "hypergeometric_quantile", "screen", "server_step"]

log = logging.getLogger("brmtrl")

#: an attack run in the server step (simulation only): (stacked updates, Byzantine mask) -> updates
ServerAttack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Aggregation:
    """The configured rule: its name, the f it assumes per round, its other keyword arguments and the
    largest update norm accepted (0: no limit beyond finiteness)."""

    name: str
    f: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    max_norm: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], per_round: int, byzantine: int, pool: int) -> "Aggregation":
        """``aggregator.f = 'auto'``: the number of Byzantine clients among the ``per_round`` sampled
        follows a hypergeometric law (``byzantine`` of ``pool`` clients are Byzantine); 'auto' takes its
        95th percentile, so that the assumed f is exceeded in at most 5 % of rounds (the expected count,
        ⌈fraction · per_round⌉, is exceeded in about a third). Each round records the assumed and the
        true count. An f the rule cannot tolerate with ``per_round`` rows is lowered to the largest it
        can, with a warning (``'auto'``), or is a config error (an explicit value)."""
        name = cfg["aggregator.name"]
        rule = agg_mod.AGGREGATORS[name]
        if rule.min_rows is not None and per_round < rule.min_rows(0):
            raise ConfigError(f"config key 'aggregator.name' = {name!r} needs at least {rule.min_rows(0)} clients "
                              f"per round, but train.participation samples {per_round}; raise train.participation")
        f = cfg["aggregator.f"]
        if f == "auto":
            f = hypergeometric_quantile(0.95, pool, byzantine, per_round)
            if f > rule.largest_f(per_round):
                log.warning("aggregator.f='auto' gives f=%d, more than %s tolerates with %d clients per round; "
                            "it assumes f=%d", f, name, per_round, rule.largest_f(per_round))
                f = rule.largest_f(per_round)
        elif rule.min_rows is not None and per_round < rule.min_rows(f):
            raise ConfigError(
                f"config key 'aggregator.f' = {f} is too large for {name} with {per_round} clients sampled per "
                f"round (needs {rule.min_rows(f)} or more); lower aggregator.f or raise train.participation")
        params = {k: cfg[f"aggregator.{k}"] for k in rule.params if k != "f"}
        return cls(name, int(f), params, float(cfg["aggregator.max_norm"]))


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


def screen(updates: Sequence[Any], clients: Sequence[Any], *, size: int,
           max_norm: float = 0.0) -> tuple[list[int], list[dict[str, Any]]]:
    """Check every update before anything is stacked: the positions of the acceptable ones, and a
    ``{"client", "reason"}`` entry for each rejected one."""
    kept, rejected = [], []
    for i, (u, c) in enumerate(zip(updates, clients)):
        why = _reason(u, size, max_norm)
        if why is None:
            kept.append(i)
        else:
            rejected.append({"client": c, "reason": why})
    return kept, rejected


def aggregate(x: torch.Tensor, agg: Aggregation) -> tuple[torch.Tensor, dict[str, Any]]:
    """Combine the stacked accepted updates ``x`` (n, d) with the rule, in float64. f is lowered to
    what the rule tolerates among the n rows that are left (rows may have been rejected)."""
    x = x.to(torch.float64)
    n = x.shape[0]
    rule = agg_mod.AGGREGATORS[agg.name]
    info: dict[str, Any] = {}
    if agg.name == "geometric_median":
        res = agg_mod.geometric_median_result(x, **agg.params)
        return res.point, {"gm_iterations": res.iterations, "gm_converged": res.converged}
    kwargs: dict[str, Any] = dict(agg.params)
    if "f" in rule.params:
        kwargs["f"] = min(agg.f, rule.largest_f(n))
        info["f_used"] = kwargs["f"]
    if "m" in kwargs:
        kwargs["m"] = min(kwargs["m"], n) or None
    return rule.fn(x, **kwargs), info


def server_step(updates: Sequence[Any], clients: Sequence[Any], agg: Aggregation, *, size: int,
                round_: int = 0, attack: ServerAttack | None = None,
                byzantine: Sequence[bool] | None = None) -> StepResult:
    """Screen, (in simulation, apply an omniscient ``attack`` to the ``byzantine`` rows), aggregate.

    Returns the step to add to φ, or None when too few valid updates are left for the rule (φ is then
    left unchanged and the round's record says why). Rejections are logged with the client and reason.
    """
    kept, rejected = screen(updates, clients, size=size, max_norm=agg.max_norm)
    for entry in rejected:
        log.warning("round %d: rejected the update of client %s (%s)", round_, entry["client"], entry["reason"])
    accepted = [clients[i] for i in kept]
    info: dict[str, Any] = {"aggregator": agg.name, "f_assumed": agg.f, "updates_received": len(updates),
                            "updates_accepted": len(kept)}
    if not kept:
        info["skipped"] = "no valid update"
        return StepResult(None, accepted, rejected, info)
    x = torch.stack([updates[i].to(torch.float64) for i in kept])
    if attack is not None and byzantine is not None:
        mask = torch.tensor([bool(byzantine[i]) for i in kept], device=x.device)
        if bool(mask.any()):
            x = attack(x, mask).to(torch.float64)
    rule = agg_mod.AGGREGATORS[agg.name]
    if rule.min_rows is not None and len(kept) < rule.min_rows(0):
        log.warning("round %d: only %d valid updates, fewer than %s needs; φ is left unchanged this round",
                    round_, len(kept), agg.name)
        info["skipped"] = f"{len(kept)} valid updates, fewer than {agg.name} needs ({rule.min_rows(0)})"
        return StepResult(None, accepted, rejected, info)
    step, rule_info = aggregate(x, agg)
    info.update(rule_info)
    return StepResult(step, accepted, rejected, info)
