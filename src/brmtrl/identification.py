"""Byzantine identification: how well the server's step singles out the Byzantine clients.

A client is *flagged* in a round when the server step rejected its update (screening) or the rule gave
it a trust below :data:`brmtrl.aggregators.FLAG_BELOW` (``info["flagged"]``: Krum's unselected rows, the
geometric median's far rows, the trimmed or clipped clients, ...). Per round and over the whole run:

    precision = |flagged ∩ Byzantine| / |flagged|,   recall = |flagged ∩ Byzantine| / |Byzantine senders|

over the clients that sent something that round. Precision is None in a round that flags nobody,
recall None in a round without a Byzantine sender. Only a simulation (or a deployment whose nodes
declare their role) knows who is Byzantine; the rule never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["FlagCounts", "flag_counts", "overall", "ratios"]


@dataclass(frozen=True)
class FlagCounts:
    """One round's confusion counts: Byzantine flagged (tp), honest flagged (fp), Byzantine not
    flagged (fn), honest not flagged (tn)."""

    tp: int
    fp: int
    fn: int
    tn: int

    def as_dict(self, round_: int) -> dict[str, Any]:
        return {"round": round_, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                **ratios(self.tp, self.fp, self.fn)}


def ratios(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision and recall (None where the denominator is 0)."""
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None}


def flag_counts(senders: Sequence[Any], flagged: Iterable[Any], byzantine: Iterable[Any]) -> FlagCounts:
    """Counts over the clients that sent an update (``senders``): ``flagged`` holds the clients the
    step rejected or distrusted, ``byzantine`` the truly Byzantine ones."""
    sent = set(senders)
    flags, byz = set(flagged) & sent, set(byzantine) & sent
    tp = len(flags & byz)
    return FlagCounts(tp, len(flags - byz), len(byz - flags), len(sent - flags - byz))


def overall(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's precision and recall from the summed counts of its rounds."""
    tp, fp, fn, tn = (sum(int(r[k]) for r in rounds) for k in ("tp", "fp", "fn", "tn"))
    return {"rounds": len(rounds), "tp": tp, "fp": fp, "fn": fn, "tn": tn, **ratios(tp, fp, fn)}
