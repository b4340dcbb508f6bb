"""The record of a run, one implementation for both engines: what each server step and each evaluation
add, and the ``results.json`` dictionary they make.

The built-in engine (:mod:`brmtrl.engine`) and the Flower ``ServerApp`` (:mod:`brmtrl.flower.server_app`)
feed the same :class:`RunRecord`, so the two cannot drift: a round above the assumed f is listed
whether or not it is evaluated, every rejection and every round's identification counts are kept, and
a new ``results.json`` field is added once. The record is part of a checkpoint (:meth:`RunRecord.state`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

from .identification import flag_counts, overall as identification_overall
from .server import StepResult

__all__ = ["FINAL_KEYS", "RunRecord"]

log = logging.getLogger("brmtrl")

#: the last evaluated round's metrics that ``final`` repeats
FINAL_KEYS = ("honest_acc_mean", "honest_acc_std", "honest_acc_min", "honest_loss_mean", "clients_scored")


@dataclass
class RunRecord:
    """History (one row per evaluated round), rejected updates, per-round identification and the rounds
    where more Byzantine updates were accepted than the ``f`` the server assumed (``uses_f``: whether
    any step of the rule takes f)."""

    f: int
    uses_f: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    identification: list[dict[str, Any]] = field(default_factory=list)
    f_exceeded_rounds: list[int] = field(default_factory=list)
    #: the last evaluation's per-client scores (:func:`brmtrl.evaluation.client_scores`), for ``final``
    client_scores: dict[str, Any] | None = None

    def record_step(self, r: int, senders: Sequence[Any], step: StepResult,
                    byzantine: Collection[Any]) -> dict[str, Any]:
        """Book round r's server step (``senders``: who sent an update; ``byzantine``: the simulation's
        truth, for the record only). Returns the round's aggregation fields for its history row."""
        byz = set(byzantine)
        for entry in step.rejected:
            self.rejected.append({"round": r, **entry})
        flagged = [e["client"] for e in step.rejected] + list(step.info.get("flagged", []))
        ident = {**flag_counts(senders, flagged, byz).as_dict(r), "flagged": sorted(flagged),
                 "accepted": list(step.accepted), "trust": step.info.get("trust", [])}
        self.identification.append(ident)
        info = {k: v for k, v in step.info.items() if k not in ("trust", "flagged", "reputation_new")}
        if "reputation_new" in step.info:
            info["reputation_new"] = len(step.info["reputation_new"])
        info.update(flagged=len(flagged), flag_precision=ident["precision"], flag_recall=ident["recall"])
        accepted = sum(c in byz for c in step.accepted)
        info["byzantine_accepted"] = accepted
        if accepted > self.f and self.uses_f:
            if not self.f_exceeded_rounds:
                log.warning("round %d: %d Byzantine updates accepted, more than aggregator.f = %d assumes "
                            "(the sampled count varies by round); such rounds are listed in results.json",
                            r, accepted, self.f)
            self.f_exceeded_rounds.append(r)
        return info

    def add_evaluation(self, r: int, metrics: Mapping[str, Any], *, round_s: float, byzantine_sampled: int,
                       rejected: int, no_update: int, step_info: Mapping[str, Any]) -> dict[str, Any]:
        """Append round r's history row: its metrics, then what the round did (per-client scores are kept
        for ``final`` only)."""
        metrics = dict(metrics)
        self.client_scores = metrics.pop("client_scores", self.client_scores)
        row = {"round": r, **metrics, "round_s": round(round_s, 6), "byzantine_sampled": byzantine_sampled,
               "rejected": rejected, "no_update": no_update, **step_info}
        self.history.append(row)
        return row

    def final(self, *, byzantine: Sequence[Any], holdout: Sequence[Any] = (),
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``results.json``'s ``final``: the last evaluated round's metrics and the run's totals."""
        last = self.history[-1] if self.history else {}
        out: dict[str, Any] = {k: last.get(k) for k in FINAL_KEYS}
        if holdout:
            out["transfer_acc_mean"] = last.get("transfer_acc_mean")
            out["transfer_clients"] = list(holdout)
        if "subspace_distance" in last:
            out["subspace_distance"] = last["subspace_distance"]
        out["byzantine_clients"] = list(byzantine)
        out["aggregator_f"] = self.f
        out["rounds_byzantine_exceeded_f"] = list(self.f_exceeded_rounds)
        out["updates_rejected"] = len(self.rejected)
        if self.client_scores is not None:
            out["client_scores"] = self.client_scores
        out.update(extra or {})
        out["rounds"] = last.get("round", 0)
        return out

    def results(self, *, config: Mapping[str, Any], engine: str, data: Mapping[str, Any], final: Mapping[str, Any],
                transfer: Any, short_rounds: Sequence[Any], notes: Sequence[str],
                timing: Mapping[str, Any], reputation: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``results.json`` dictionary, the same keys from either engine (``reputation``: the server's
        reputation summary, :meth:`brmtrl.reputation.Reputation.summary`, None without one)."""
        return {
            "config": dict(config),
            "engine": engine,
            "data": dict(data),
            "history": self.history,
            "final": dict(final),
            "rejected_updates": self.rejected,
            "transfer": transfer,
            "identification": {"rounds": self.identification, "overall": identification_overall(self.identification)},
            "reputation": None if reputation is None else dict(reputation),
            "short_rounds": list(short_rounds),
            "notes": list(notes),
            "timing": dict(timing),
        }

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the record."""
        return {"history": self.history, "rejected": self.rejected, "identification": self.identification,
                "f_exceeded_rounds": self.f_exceeded_rounds, "client_scores": self.client_scores}

    def restore(self, st: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` (a checkpoint written before ``f_exceeded_rounds`` was kept gets
        them back from its evaluated history)."""
        self.history = list(st["history"])
        self.rejected = list(st["rejected"])
        self.identification = list(st.get("identification", []))
        self.client_scores = st.get("client_scores")
        if "f_exceeded_rounds" in st:
            self.f_exceeded_rounds = list(st["f_exceeded_rounds"])
        else:
            self.f_exceeded_rounds = [h["round"] for h in self.history
                                      if self.uses_f and h.get("byzantine_accepted", 0) > self.f]
