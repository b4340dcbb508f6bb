"""The Flower ``ClientApp``: a :class:`~brmtrl.flower.node.Node` behind Flower's Message API.

Messages (sent by :mod:`brmtrl.flower.server_app`):

* ``train``: φ in ``arrays["shared"]``; the node runs its local update, keeps its head in
  ``context.state`` (it survives across rounds and never leaves the node) and replies with its delta
  of φ in ``arrays["delta"]`` (nothing when it has no training data) and ``metrics``.
* ``evaluate``: φ; the node replies with its test accuracy, loss and test-set size, with its own head.
* ``query.describe``: the node's partition and role; ``query.transfer``: a new client fits a fresh
  head on φ frozen and replies with its test accuracy.

Every message carries the run's resolved config as JSON (``config["brmtrl-config"]``) and the round
(``config["server-round"]``): the server is the one authority on the experiment. A node's own config
(``flower-supernode --node-config``) says which client it is: ``partition-id`` (required), and
optionally ``byzantine`` / ``transfer`` (true/false: override the role the seed gives it),
``dataset-root`` (where this machine keeps the data) and ``fault`` (``nan`` or ``size``: reply
with a malformed update, for testing the server's screening).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..client import EvalResult
from ..federation import model_spec
from .node import Node, config_from_json

__all__ = ["app", "hosted_partitions", "node_for"]

PRIVATE = "brmtrl-private"
_NODES: dict[tuple[str, int, str], Node] = {}


def _flag(value: Any, key: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"node config {key!r} must be true or false, got {value!r}")


def hosted_partitions(context: Context) -> list[int]:
    """The clients this node plays: node config ``partition-ids`` ("0,4,8" or "0-12"), else
    ``partition-id`` (Flower's simulation sets it; a real node is started with it)."""
    nc = context.node_config
    if "partition-ids" in nc:
        out: list[int] = []
        for part in str(nc["partition-ids"]).replace(" ", "").split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                out += range(int(lo), int(hi) + 1)
            elif part:
                out.append(int(part))
        return out
    if "partition-id" in nc:
        return [int(nc["partition-id"])]
    raise ValueError("node config lacks 'partition-id': start the SuperNode with --node-config \"partition-id=N\"")


def node_for(message: Message, context: Context, partition: int | None = None) -> Node:
    """The client this message is for (``config["partition-id"]``, one of the node's partitions), built
    once per config and partition in this process, then reused."""
    cfg_json = str(message.content["config"]["brmtrl-config"])
    hosted = hosted_partitions(context)
    if partition is None:
        partition = int(message.content["config"].get("partition-id", hosted[0]))  # type: ignore[arg-type]
    if partition not in hosted:
        raise ValueError(f"partition {partition} is not hosted by this node (it hosts {hosted})")
    nc = context.node_config
    key = (cfg_json, partition, repr(sorted(nc.items())))
    if key not in _NODES:
        cfg = config_from_json(cfg_json)
        if nc.get("dataset-root"):
            cfg = cfg.replace(dataset__root=str(nc["dataset-root"]))
        if any(k[0] != cfg_json for k in _NODES):
            _NODES.clear()  # one experiment at a time per process
        _NODES[key] = Node(cfg, partition, byzantine=_flag(nc.get("byzantine"), "byzantine"),
                           holdout=_flag(nc.get("transfer"), "transfer"))
    return _NODES[key]


def _tensor(record: ArrayRecord, key: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(record[key].numpy()))


def _array(t: torch.Tensor) -> Array:
    return Array(np.ascontiguousarray(t.detach().cpu().numpy()))


def _eval_metrics(node: Node, res: EvalResult, kind: str) -> MetricRecord:
    return MetricRecord({"accuracy": float(res.accuracy), "loss": float(res.loss), "num-examples": res.num_samples,
                         "partition-id": node.id, "byzantine": int(node.byzantine), "transfer": int(kind == "transfer")})


def _private(node: Node, context: Context) -> torch.Tensor | None:
    key = f"{PRIVATE}-{node.id}"
    if key in context.state:
        return _tensor(context.state[key], "private")  # type: ignore[arg-type]
    return None


app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    node = node_for(message, context)
    r = int(message.content["config"]["server-round"])
    shared = _tensor(message.content["arrays"], "shared")
    res, sent = node.train(shared, _private(node, context), r)
    context.state[f"{PRIVATE}-{node.id}"] = ArrayRecord({"private": _array(res.private)})
    fault = str(context.node_config.get("fault", ""))
    if sent is not None and fault == "nan":
        sent = sent * float("nan")
    elif sent is not None and fault == "size":
        sent = sent[:-1]
    content = RecordDict({"metrics": MetricRecord({"num-examples": res.num_samples, "partition-id": node.id,
                                                   "byzantine": int(node.byzantine)})})
    if sent is not None:
        content["arrays"] = ArrayRecord({"delta": _array(sent)})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    node = node_for(message, context)
    r = int(message.content["config"]["server-round"])
    res = node.evaluate(_tensor(message.content["arrays"], "shared"), _private(node, context), r)
    return Message(RecordDict({"metrics": _eval_metrics(node, res, "evaluate")}), reply_to=message)


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    nodes = [node_for(message, context, p) for p in hosted_partitions(context)]
    info = ConfigRecord({"partitions": [n.id for n in nodes], "byzantine": [n.byzantine for n in nodes],
                         "transfer": [n.holdout for n in nodes],
                         "train-samples": [int(len(n.data.train_idx[n.id])) for n in nodes],
                         "num-clients": nodes[0].data.num_clients, "shared-size": nodes[0].shared_size,
                         "model-spec": json.dumps(model_spec(nodes[0].data))})
    return Message(RecordDict({"config": info}), reply_to=message)


@app.query("transfer")
def transfer(message: Message, context: Context) -> Message:
    node = node_for(message, context)
    r = int(message.content["config"]["server-round"])
    res = node.transfer(_tensor(message.content["arrays"], "shared"), r)
    return Message(RecordDict({"metrics": _eval_metrics(node, res, "transfer")}), reply_to=message)
