"""The Flower ``ClientApp``: a :class:`~brmtrl.flower.node.Node` behind Flower's Message API.

Messages (sent by :mod:`brmtrl.flower.server_app`):

* ``train``: φ in ``arrays["shared"]`` and the round's clients of this node in
  ``config["partition-ids"]``; each runs its local update, keeps its head in ``context.state`` (it
  survives across rounds and never leaves the node) and replies with its delta of φ in
  ``arrays["delta-<id>"]`` (none when it has no training data), with ``metrics`` listing the clients.
* ``evaluate``: φ; each named client replies with its test accuracy, loss and test-set size, with
  its own head.
* ``query.describe``: the clients the node hosts and their roles; ``query.transfer``: held-out
  clients fit a fresh head on φ frozen and reply with their test accuracy.

A node may host several clients (a site with several users); the server sends it one message per
round for all of its sampled clients, since a SuperNode handles one message at a time.

Every message carries the run's resolved config as JSON (``config["brmtrl-config"]``) and the round
(``config["server-round"]``): the server is the one authority on the experiment. A node's own config
(``flower-supernode --node-config``) says which clients it hosts: ``partition-id`` or
``partition-ids`` (``"0-12"``, ``"0,4,8"``), and
optionally ``byzantine`` (true/false: all of its clients), ``byzantine-ids`` (which of its clients are
Byzantine, ``"3,7"``), ``attack`` (what its Byzantine clients send, an attack a node can run on its own
update; default the config's ``attack.name``), ``transfer`` (true/false: override the held-out role the
seed gives it), ``name`` (how the operator knows the node: errors and notes use it), ``dataset-root`` (where this
machine keeps the data), ``state-dir`` (a directory on this machine where
the node keeps its clients' private parts across restarts: :mod:`brmtrl.flower.node_state`) and ``fault``
(``nan`` or ``size``: reply with a malformed update, for testing the server's screening).

A client is Byzantine only when its node config says so; in Flower's simulation engine, whose nodes
have no config of their own, the server's messages say ``brmtrl-roles-from-seed`` and the config's
seed picks the Byzantine clients, as in the built-in engine.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import attacks
from ..client import EvalResult
from ..device import synchronize
from ..federation import model_spec
from .node import Node, config_from_json
from .node_state import NodeState
from .records import array, arrays_of, config_of, ints, scalar, tensor

__all__ = ["app", "byzantine_role", "hosted_partitions", "node_for"]

PRIVATE = "brmtrl-private"
GUARD = "brmtrl-guard"
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
        return _ids(nc["partition-ids"])
    if "partition-id" in nc:
        return [int(nc["partition-id"])]
    raise ValueError("node config lacks 'partition-id': start the SuperNode with --node-config \"partition-id=N\"")


def _ids(text: Any) -> list[int]:
    """``"0-12"``, ``"0,4,8"`` or ``""`` as a list of ints."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += range(int(lo), int(hi) + 1)
        elif part:
            out.append(int(part))
    return out


def byzantine_role(message: Message, context: Context, partition: int) -> bool | None:
    """Whether client ``partition`` is Byzantine: node config ``byzantine-ids``, else ``byzantine``; else,
    when the message says the seed decides (Flower's simulation), None (the seed's choice); else False:
    outside a simulation, a node attacks only when its own node config says so."""
    nc = context.node_config
    if "byzantine-ids" in nc:
        try:
            return partition in _ids(nc["byzantine-ids"])
        except ValueError:
            raise ValueError(f"node config 'byzantine-ids' must list partition ids (\"3,7\" or \"0-4\"); "
                             f"got {nc['byzantine-ids']!r}") from None
    flag = _flag(nc.get("byzantine"), "byzantine")
    if flag is not None:
        return flag
    cfg = config_of(message)
    return None if "brmtrl-roles-from-seed" in cfg and bool(cfg["brmtrl-roles-from-seed"]) else False


def node_for(message: Message, context: Context, partition: int) -> Node:
    """Client ``partition`` (one this node hosts) of the message's experiment, built once per config
    and partition in this process, then reused."""
    cfg_json = str(config_of(message)["brmtrl-config"])
    hosted = hosted_partitions(context)
    if partition not in hosted:
        raise ValueError(f"partition {partition} is not hosted by this node (it hosts {hosted})")
    nc = context.node_config
    role = byzantine_role(message, context, partition)
    key = (cfg_json, partition, repr(sorted(nc.items())), role)
    if key not in _NODES:
        cfg = config_from_json(cfg_json)
        if nc.get("dataset-root"):
            cfg = cfg.replace(dataset__root=str(nc["dataset-root"]))
        if nc.get("attack"):
            name = str(nc["attack"])
            try:
                omniscient = attacks.is_omniscient(name)
            except ValueError as exc:
                raise ValueError(f"node config 'attack' = {name!r}: {exc}") from None
            if omniscient:
                raise ValueError(f"node config 'attack' = {name!r} reads other nodes' updates; a node runs an attack "
                                 "on its own update, one of " + ", ".join(sorted(set(attacks.ATTACKS) - attacks.OMNISCIENT)))
            cfg = cfg.replace(attack__name=name)
        if any(k[0] != cfg_json for k in _NODES):
            _NODES.clear()  # one experiment at a time per process
        _NODES[key] = Node(cfg, partition, byzantine=role, holdout=_flag(nc.get("transfer"), "transfer"))
    return _NODES[key]


def _partitions(message: Message, context: Context) -> list[int]:
    """The clients a message is for: ``config["partition-ids"]`` (default: all this node hosts)."""
    cfg = config_of(message)
    if "partition-ids" in cfg:
        return ints(cfg["partition-ids"])
    return hosted_partitions(context)


def _eval_metrics(results: list[tuple[Node, EvalResult]], kind: str) -> MetricRecord:
    return MetricRecord({"partition-ids": [n.id for n, _ in results],
                         "accuracy": [float(r.accuracy) for _, r in results],
                         "loss": [float(r.loss) for _, r in results],
                         "num-examples": [r.num_samples for _, r in results],
                         "byzantine": [int(n.byzantine) for n, _ in results],
                         "personal": [-1 if r.personal is None else int(r.personal) for _, r in results],
                         "transfer": int(kind == "transfer")})


def _private(node: Node, context: Context, kind: str = PRIVATE) -> torch.Tensor | None:
    """What the node keeps in memory for client ``node.id``: its private part (``PRIVATE``) or its guard's
    personal model (``GUARD``); None before its first round."""
    key = f"{kind}-{node.id}"
    if key in context.state:
        return tensor(context.state.array_records[key], "private")
    return None


_STATES: dict[tuple[str, str], NodeState] = {}


def _state_dir(message: Message, context: Context) -> NodeState | None:
    """The node's on-disk state (node config ``state-dir``), for the message's experiment; None without."""
    folder = context.node_config.get("state-dir")
    if not folder:
        return None
    cfg_json = str(config_of(message)["brmtrl-config"])
    key = (str(folder), cfg_json)
    if key not in _STATES:
        from ..checkpoint import config_fingerprint

        _STATES[key] = NodeState(str(folder), config_fingerprint(config_from_json(cfg_json)))
    return _STATES[key]


def _held(node: Node, message: Message, context: Context, r: int, *, training: bool) -> tuple[Any, Any]:
    """Client ``node.id``'s private part and guard state that count in round r: from the node's
    ``state-dir`` when it has one (it survives restarts), else from memory."""
    disk = _state_dir(message, context)
    if disk is None:
        return _private(node, context), _private(node, context, GUARD)
    st = disk.load(node.id, r, training=training)
    return st.get("private"), st.get("guard")


app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Local updates of the clients named in the message (one or several hosted by this node)."""
    r = int(scalar(config_of(message)["server-round"]))
    shared = tensor(arrays_of(message), "shared")
    fault = str(context.node_config.get("fault", ""))
    arrays, pids, counts, byz, seconds = ArrayRecord(), [], [], [], []
    partitions = _partitions(message, context)
    disk = _state_dir(message, context)
    if disk is not None:   # all of them or none: a refused message leaves the state-dir as it was
        disk.check(partitions)
    for pid in partitions:
        node = node_for(message, context, pid)
        private, guard_before = _held(node, message, context, r, training=True)
        t0 = time.perf_counter()
        res, sent = node.train(shared, private, r)
        synchronize(node.device)   # the node's queued kernels belong to its training time
        seconds.append(time.perf_counter() - t0)
        context.state[f"{PRIVATE}-{node.id}"] = ArrayRecord({"private": array(res.private)})
        guard = node.update_guard(shared, res, guard_before, r)
        if guard is not None:
            context.state[f"{GUARD}-{node.id}"] = ArrayRecord({"private": array(guard)})
        if disk is not None:   # written before the reply: a round the server saw is on the node's disk
            disk.save(node.id, r, {"private": res.private, **({} if guard is None else {"guard": guard})})
        if sent is not None and fault == "nan":
            sent = sent * float("nan")
        elif sent is not None and fault == "size":
            sent = sent[:-1]
        if sent is not None:
            arrays[f"delta-{pid}"] = array(sent)
        pids.append(pid)
        counts.append(res.num_samples)
        byz.append(int(node.byzantine))
    metrics = MetricRecord({"partition-ids": pids, "num-examples": counts, "byzantine": byz, "train-s": seconds})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Each named client's test accuracy with its own head."""
    r = int(scalar(config_of(message)["server-round"]))
    shared = tensor(arrays_of(message), "shared")
    results = []
    for pid in _partitions(message, context):
        node = node_for(message, context, pid)
        private, guard = _held(node, message, context, r, training=False)
        results.append((node, node.evaluate(shared, private, r, guard)))
    return Message(RecordDict({"metrics": _eval_metrics(results, "evaluate")}), reply_to=message)


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    """The clients this node hosts, their roles and what the server needs to build the model."""
    nodes = [node_for(message, context, p) for p in hosted_partitions(context)]
    info = ConfigRecord({"partitions": [n.id for n in nodes], "byzantine": [n.byzantine for n in nodes],
                         "transfer": [n.holdout for n in nodes],
                         "train-samples": [int(len(n.data.train_idx[n.id])) for n in nodes],
                         "num-clients": nodes[0].data.num_clients, "shared-size": nodes[0].shared_size,
                         "name": str(context.node_config.get("name", "")),
                         "model-spec": json.dumps(model_spec(nodes[0].data))})
    return Message(RecordDict({"config": info}), reply_to=message)


@app.query("transfer")
def transfer(message: Message, context: Context) -> Message:
    """Held-out clients: fit a fresh head on φ frozen, then score it."""
    r = int(scalar(config_of(message)["server-round"]))
    shared = tensor(arrays_of(message), "shared")
    results = [(n, n.transfer(shared, r)) for n in (node_for(message, context, p) for p in _partitions(message, context))]
    return Message(RecordDict({"metrics": _eval_metrics(results, "transfer")}), reply_to=message)
