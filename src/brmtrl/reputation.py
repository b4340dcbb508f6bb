"""A server-side reputation across rounds: clients the rule flags persistently are excluded.

Each round the server step flags some clients: updates it rejected at screening, and accepted ones the
rule trusted less than :data:`brmtrl.aggregators.FLAG_BELOW` (:mod:`brmtrl.identification`). One flag
says little under heterogeneity, where an honest client may be an outlier now and then; a client
flagged in most of its recent rounds is another matter. With ``reputation.name = "flags"`` the server
keeps, for every client, whether it was flagged in each of its last ``reputation.window`` rounds of
participation; once a client has taken part at least ``reputation.min_rounds`` times and was flagged in
at least ``reputation.threshold`` of its recorded rounds,

    excluded(i)  ⇔  k_i ≥ m  and  |{flagged rounds among i's last min(k_i, W) participations}| ≥ θ · min(k_i, W)

(k_i: i's participations so far, W the window, m the minimum, θ the threshold),

it is excluded for the rest of the run: it still receives φ and keeps its head (its personalized model
is still scored), but the server rejects its updates before screening, so neither the rule nor the
flags see them again. This is the server's declared setting, built from what the server sees (the
flags it raised itself): nothing here reads the simulated attack or who is Byzantine; a simulation
reports, for the record, how many honest clients were excluded (``results.json`` ``reputation``).

It defends against attackers that the rule already singles out but that still pull the aggregate by
their share, round after round (the large updates, and the attacks that tune themselves against the
rule: docs/robustness.md); it cannot exclude an attacker the rule never flags (ALIE-like rows inside
the honest cloud). ``reputation.name = "none"`` (the schema's default; the shipped configs set
``"flags"``) is the paper's method. Its state is part of a checkpoint (:meth:`Reputation.state`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

__all__ = ["Reputation", "without"]

log = logging.getLogger("brmtrl")


@dataclass
class Reputation:
    """Per-client flags over the last ``window`` participations and the clients excluded (client ->
    the round it was excluded in)."""

    window: int = 10
    threshold: float = 0.8
    min_rounds: int = 3
    recent: dict[Any, list[bool]] = field(default_factory=dict)
    excluded: dict[Any, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Reputation | None":
        """The server's ``reputation.*`` settings; None with ``reputation.name = "none"``."""
        if cfg["reputation.name"] == "none":
            return None
        return cls(int(cfg["reputation.window"]), float(cfg["reputation.threshold"]), int(cfg["reputation.min_rounds"]))

    def excluded_among(self, senders: Sequence[Any]) -> set[Any]:
        """The senders the server no longer aggregates."""
        return {c for c in senders if c in self.excluded}

    def observe(self, r: int, senders: Sequence[Any], flagged: Collection[Any]) -> list[Any]:
        """Book round r: ``senders`` took part (excluded ones are skipped), ``flagged`` were flagged.
        Returns the clients excluded this round."""
        flags, new = set(flagged), []
        for c in senders:
            if c in self.excluded:
                continue
            hist = self.recent.setdefault(c, [])
            hist.append(c in flags)
            del hist[:-self.window]
            if len(hist) >= self.min_rounds and sum(hist) >= self.threshold * len(hist) - 1e-9:
                self.excluded[c] = r
                new.append(c)
                log.info("round %d: client %s excluded by reputation (flagged in %d of its last %d rounds)",
                         r, c, sum(hist), len(hist))
        return new

    def summary(self, byzantine: Collection[Any] | None = None) -> dict[str, Any]:
        """``results.json``'s ``reputation``: who was excluded and when; with the simulation's truth
        (``byzantine``), how many of them were honest (false exclusions)."""
        out: dict[str, Any] = {"window": self.window, "threshold": self.threshold, "min_rounds": self.min_rounds,
                               "excluded": [{"client": c, "round": r} for c, r in sorted(self.excluded.items(),
                                                                                         key=lambda kv: (kv[1], str(kv[0])))]}
        if byzantine is not None:
            byz = set(byzantine)
            out["byzantine_excluded"] = sum(c in byz for c in self.excluded)
            out["honest_excluded"] = sum(c not in byz for c in self.excluded)
        return out

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        return {"recent": {c: list(h) for c, h in self.recent.items()}, "excluded": dict(self.excluded)}

    def restore(self, st: Mapping[str, Any]) -> None:
        self.recent = {c: list(h) for c, h in st["recent"].items()}
        self.excluded = dict(st["excluded"])


def without(excluded: Collection[Any], hook: Any, updates: Sequence[Any], senders: Sequence[Any],
            r: int) -> list[Any]:
    """Run an updates hook (the simulated adversary) on the rows of the senders not ``excluded`` only,
    the others passing unchanged: an adversary that knows the defense crafts only rows that count."""
    keep = [i for i, c in enumerate(senders) if c not in excluded]
    out = list(updates)
    if not excluded:
        return list(hook(out, list(senders), r))
    crafted = hook([updates[i] for i in keep], [senders[i] for i in keep], r)
    for j, i in enumerate(keep):
        out[i] = crafted[j]
    return out
