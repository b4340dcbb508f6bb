"""Who is in a deployed federation: which node hosts which client, and each client's role, as the nodes
describe themselves (``query.describe``), asked when the run starts (:func:`discover`) and when a node the
server has not seen connects (:func:`describe_nodes`: a restarted SuperNode comes back under a new id)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from .errors import FederationError
from .records import config_of, ints, scalar

__all__ = ["Roster", "config_record", "describe_nodes", "discover"]

log = logging.getLogger("brmtrl")


class Roster:
    """Which node hosts which client, and each client's role, as the nodes described themselves."""

    def __init__(self) -> None:
        self.node_of: dict[int, int] = {}
        self.byzantine: set[int] = set()
        self.holdout: set[int] = set()
        self.train_samples: dict[int, int] = {}
        self.num_clients = 0
        self.shared_size = 0
        self.model_spec: dict[str, Any] = {}
        self.names: dict[int, str] = {}   # node id -> the name its node config gives it (``name``)

    def label(self, node: int) -> str:
        """The node as its operator knows it: its node config ``name``, else the clients it hosts, with
        Flower's node id."""
        hosted = sorted(p for p, n in self.node_of.items() if n == node)
        name = self.names.get(node) or (f"clients {hosted[0]}-{hosted[-1]}" if hosted else "unknown clients")
        return f"{name} (Flower node {node})"

    @property
    def training(self) -> list[int]:
        return sorted(p for p in self.node_of if p not in self.holdout)

    @property
    def honest(self) -> list[int]:
        return [p for p in self.training if p not in self.byzantine]


def config_record(cfg_json: str, r: int, partitions: list[int] | None = None, *,
                   roles_from_seed: bool = False) -> ConfigRecord:
    rec = ConfigRecord({"brmtrl-config": cfg_json, "server-round": r})
    if roles_from_seed:
        rec["brmtrl-roles-from-seed"] = True
    if partitions is not None:
        rec["partition-ids"] = partitions
    return rec


def describe_nodes(grid: Grid, cfg_json: str, nodes: list[int], timeout: float, *,
                   roles_from_seed: bool = False,
                   errors: dict[int, str] | None = None) -> dict[int, list[dict[str, Any]] | None]:
    """Ask ``nodes`` which clients they host: per node that answered, one ``{"id", "byzantine",
    "transfer", "train-samples", "info"}`` per client (None for a node that answered with an error, whose
    reason goes into ``errors``)."""
    msgs = [Message(RecordDict({"config": config_record(cfg_json, 0, roles_from_seed=roles_from_seed)}),
                    dst_node_id=n, message_type="query.describe") for n in nodes]
    out: dict[int, list[dict[str, Any]] | None] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        src = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %s could not describe itself: %s", src, reply.error.reason)
            if errors is not None:
                reason = str(reply.error.reason)
                errors[src] = reason if len(reason) <= 400 else reason[:400] + " …"
            out[src] = None
            continue
        info = config_of(reply)
        flags = [cast(list, info[k]) for k in ("byzantine", "transfer")]
        out[src] = [{"id": p, "byzantine": bool(b), "transfer": bool(t), "train-samples": n, "info": info}
                    for p, b, t, n in zip(ints(info["partitions"]), flags[0], flags[1], ints(info["train-samples"]))]
    return out


def discover(grid: Grid, cfg_json: str, expected_clients: int, timeout: float, *,
             roles_from_seed: bool = False) -> Roster:
    """Ask every connected node which clients it hosts, until ``expected_clients`` are known."""
    roster = Roster()
    asked: set[int] = set()
    failed: dict[int, str] = {}      # nodes that answered with an error: the operator reads why
    deadline = time.monotonic() + timeout
    while len(roster.node_of) < expected_clients:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if not new:
            if time.monotonic() > deadline:
                why = "".join(f"; node {src} could not describe itself: {reason}" for src, reason in failed.items())
                raise FederationError(f"{len(roster.node_of)} of {expected_clients} clients connected after "
                                      f"{timeout:.0f} s{why}; start the missing SuperNodes, or fix and restart "
                                      "the failing ones (see docs/deployment.md)")
            time.sleep(0.5)
            continue
        for src, clients in describe_nodes(grid, cfg_json, new, max(1.0, deadline - time.monotonic()),
                                           roles_from_seed=roles_from_seed, errors=failed).items():
            asked.add(src)
            for c in clients or []:
                p = c["id"]
                if p in roster.node_of:
                    raise FederationError(f"client {p} is hosted by two nodes ({roster.node_of[p]} and {src}); "
                                          "give every SuperNode its own partition-id")
                roster.node_of[p] = src
                if c["info"].get("name"):
                    roster.names[src] = str(c["info"]["name"])
                roster.train_samples[p] = c["train-samples"]
                if c["byzantine"]:
                    roster.byzantine.add(p)
                if c["transfer"]:
                    roster.holdout.add(p)
                info = c["info"]
                roster.num_clients = int(scalar(info["num-clients"]))
                roster.model_spec = json.loads(str(info["model-spec"]))
                roster.shared_size = int(scalar(info["shared-size"]))
    return roster
