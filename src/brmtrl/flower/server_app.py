"""The Flower ``ServerApp``: BR-MTRL's server as a Flower :class:`~flwr.serverapp.strategy.Strategy`.

:class:`BRMTRLStrategy` overrides the hooks of Flower's template-method round loop
(``Strategy.start``): ``configure_train`` sends φ to the round's clients (the same seeded sample as
the built-in engine, :func:`brmtrl.federation.sample_clients`), ``aggregate_train`` hands the replies
to :func:`brmtrl.server.server_step` (our screening and our robust rules; Flower's Krum weights by
client-reported ``num-examples``, ours never does), ``configure_evaluate`` / ``aggregate_evaluate``
score honest clients with their own heads (:func:`brmtrl.evaluation.summarize`) and held-out clients
after they fit a fresh head. Only φ crosses the network; heads stay on the nodes.

The run writes the same ``results.json`` / ``metrics.csv`` / ``accuracy.png`` as ``brmtrl run``.
Nodes that do not answer (a killed SuperNode) are left out of later rounds; the results list the
rounds that had fewer clients and why, and the run stops with an error when fewer than
``flower.min_clients`` clients answer in a round.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from ..client import EvalResult
from ..config import SIMULATION_ONLY, Config, server_view
from ..evaluation import client_scores, summarize
from ..federation import build_model_for, num_sampled, sample_clients
from ..local_update import resolve_local_rule
from ..report import write_json, write_outputs
from ..record import RunRecord
from ..reputation import Reputation, without
from ..server import Aggregation, server_step
from ..split import get_flat
from ..checkpoint import save_checkpoint
from .errors import FederationError
from .hooks import SimulationHooks
from .roster import Roster, config_record, describe_nodes, discover
from .node import config_from_json, config_to_json
from .records import arrays_of, floats, has, ints, metrics_of, scalar

__all__ = ["BRMTRLStrategy", "FederationError", "Roster", "SimulationHooks", "discover", "make_server_app",
           "run_server"]

log = logging.getLogger("brmtrl")


class BRMTRLStrategy(Strategy):
    """BR-MTRL's server on Flower's round loop; state: φ, the history and the rejected updates.

    It reads the server's view of the config only (:func:`brmtrl.config.server_view`: no ``attack.*``);
    the full config travels to the nodes as it came (``cfg_json``), unread. What only a simulation
    adds (an omniscient adversary, seeded roles) comes through ``simulation``."""

    def __init__(self, cfg: Config, roster: Roster, shared: torch.Tensor, *, progress: Any = None,
                 simulation: SimulationHooks | None = None):
        self.cfg_json = config_to_json(cfg)       # forwarded to the nodes, never read here
        self.config_record = cfg.nested()         # written to results.json
        self.cfg = server_view(cfg)
        self.roster = roster
        self.shared = shared.to(torch.float32)
        self.m = num_sampled(self.cfg, len(roster.training))
        # the server's declared assumption; the nodes' roles (known in an experiment) are for the record only
        self.agg = Aggregation.from_config(self.cfg, self.m, len(roster.training))
        self.simulation = simulation
        self.adversary = None
        if simulation is not None and simulation.adversary is not None:
            self.adversary = simulation.adversary(sorted(roster.byzantine), roster.shared_size, self.agg)
        #: history, rejections, identification, rounds above f: the record both engines keep alike
        self.record = RunRecord(self.agg.f, self.agg.uses_f)
        self.reputation = Reputation.from_config(self.cfg)   # reputation.name; None: the paper's method
        self.last_step: torch.Tensor | None = None  # the previous aggregate (aggregator.centre = 'previous')
        self.short_rounds: list[dict[str, Any]] = []
        self.lost: set[int] = set()  # nodes that stopped answering
        self.strangers: set[int] = set()  # nodes that connected later and host no lost client
        self.rejoined: list[dict[str, Any]] = []  # clients whose restarted node came back, and when
        self.progress = progress
        self.progress_file: Path | None = None
        self._round: dict[str, Any] = {}
        self.timing = {"train_s": 0.0, "eval_s": 0.0, "rounds": 0}
        #: rounds done before this process (a resumed run): Flower's loop counts from 1 again
        self.offset = 0
        #: where the round's checkpoint goes (None: none is written)
        self.checkpoint_dir: Path | None = None
        #: the experiment as the server may see it (no attack.*): what its checkpoints are checked against
        self.identity = {k: self.cfg[k] for k in sorted(self.cfg) if not k.startswith(SIMULATION_ONLY)}

    # -------------------------------------------------------------- nodes that come back
    def rejoin(self, grid: Grid, r: int) -> None:
        """A SuperNode that restarted comes back under a new node id: when a node the server has not seen
        connects, ask it which clients it hosts, and clients whose node was lost move to it (with the same
        roles; their heads come back from the node's ``state-dir``). Called before each round's sampling."""
        known = set(self.roster.node_of.values()) | self.lost | self.strangers
        new = [n for n in grid.get_node_ids() if n not in known]
        if not new:
            return
        seeded = self.simulation is not None and self.simulation.roles_from_seed
        for src, clients in describe_nodes(grid, self.cfg_json, new, self.cfg["flower.round_timeout"],
                                           roles_from_seed=seeded).items():
            moved = []
            for c in clients or []:
                p = c["id"]
                same_role = (c["byzantine"] == (p in self.roster.byzantine)
                             and c["transfer"] == (p in self.roster.holdout))
                if p in self.roster.node_of and self.roster.node_of[p] in self.lost and same_role:
                    self.roster.node_of[p] = src
                    if c["info"].get("name"):
                        self.roster.names[src] = str(c["info"]["name"])
                    moved.append(p)
                elif p in self.roster.node_of and self.roster.node_of[p] not in self.lost:
                    log.warning("round %d: node %s also claims client %s, which node %s still hosts; ignored",
                                r, src, p, self.roster.node_of[p])
            if moved:
                log.warning("round %d: clients %s are back (node %s)", r, moved, src)
                self.rejoined.append({"round": r, "clients": moved})
            else:
                self.strangers.add(src)

    # -------------------------------------------------------------- training
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        if self.lost:
            self.rejoin(grid, server_round)
        t0 = time.perf_counter()
        sampled = sample_clients(self.cfg, self.roster.training, server_round, self.m)
        online = set(grid.get_node_ids()) - self.lost
        reachable = [p for p in sampled if self.roster.node_of[p] in online]
        self._round = {"t0": t0, "sampled": sampled, "sent": reachable,
                       "unreachable": [p for p in sampled if p not in reachable]}
        return self._messages(reachable, server_round, lambda p: "train")

    def _messages(self, partitions: list[int], r: int, kind: Any) -> list[Message]:
        """One message per node and kind, naming the node's clients among ``partitions``."""
        payload = ArrayRecord({"shared": Array(self.shared.numpy())})
        groups: dict[tuple[int, str], list[int]] = {}
        for p in partitions:
            groups.setdefault((self.roster.node_of[p], kind(p)), []).append(p)
        seeded = self.simulation is not None and self.simulation.roles_from_seed
        return [Message(RecordDict({"arrays": payload,
                                    "config": config_record(self.cfg_json, r, ps, roles_from_seed=seeded)}),
                        dst_node_id=node, message_type=t) for (node, t), ps in groups.items()]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        replies = list(replies)
        sent = self._round["sent"]
        answered: dict[int, Any] = {}
        failed: list[dict[str, Any]] = []
        train_s, slowest = 0.0, 0.0
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failed.append({"node": self.roster.label(node), "reason": f"error reply: {reply.error.reason}"})
                continue
            try:
                pids = ints(metrics_of(reply)["partition-ids"])
                node_s = sum(floats(metrics_of(reply).get("train-s", [])))
                train_s, slowest = train_s + node_s, max(slowest, node_s)
                arrays = arrays_of(reply) if has(reply, "arrays") else ArrayRecord()
            except (KeyError, TypeError, ValueError) as exc:
                failed.append({"node": self.roster.label(node),
                               "reason": f"malformed reply ({type(exc).__name__}: {exc})"})
                continue
            for p in pids:
                if p not in sent or p in answered or self.roster.node_of.get(p) != node:
                    log.warning("round %d: reply for client %s from node %s was not expected; ignored",
                                server_round, p, node)
                    continue
                answered[p] = arrays[f"delta-{p}"] if f"delta-{p}" in arrays else None
        missing = [p for p in sent if p not in answered]
        for p in missing:
            self.lost.add(self.roster.node_of[p])
        if missing or self._round["unreachable"] or failed:
            entry = {"round": server_round, "sampled": len(self._round["sampled"]), "answered": len(answered),
                     "unreachable": self._round["unreachable"], "no_reply": missing, "errors": failed}
            self.short_rounds.append(entry)
            log.warning("round %d: %d of %d sampled clients answered (unreachable %s, no reply %s)", server_round,
                        len(answered), len(self._round["sampled"]), self._round["unreachable"], missing)
            for e in failed:
                log.warning("round %d: node %s: %s", server_round, e["node"], e["reason"])
        if len(answered) < self.cfg["flower.min_clients"]:
            why = "".join(f"; node {e['node']}: {e['reason']}" for e in failed)
            raise FederationError(f"round {server_round}: only {len(answered)} clients answered, fewer than "
                                  f"flower.min_clients = {self.cfg['flower.min_clients']}{why}")
        senders = [p for p in sorted(answered) if answered[p] is not None]
        updates: list[Any] = []
        for p in senders:
            try:
                updates.append(torch.from_numpy(np.ascontiguousarray(answered[p].numpy())))
            except Exception as exc:  # a malformed array is screened out below, with its reason
                updates.append(f"unreadable array ({type(exc).__name__})")
        if self.adversary is not None:   # Flower's simulation only: the simulated omniscient adversary
            excluded = self.reputation.excluded_among(senders) if self.reputation is not None else ()
            updates = without(excluded, self.adversary, updates, senders, server_round)
        t_agg = time.perf_counter()
        step = server_step(updates, senders, self.agg, size=self.roster.shared_size, round_=server_round,
                           seed=int(self.cfg["seed"]), centre=self.last_step if self.agg.history else None,
                           reputation=self.reputation)
        step.info.update(aggregate_s=round(time.perf_counter() - t_agg, 6), clients_train_s=round(train_s, 6),
                         slowest_node_train_s=round(slowest, 6))
        if step.step is not None:   # as the built-in engine: the float64 step cast, added in float32
            self.shared = self.shared + step.step.to(self.shared.dtype)
            self.last_step = step.step.to(torch.float64)
        byz = self.roster.byzantine
        info = self.record.record_step(server_round, senders, step, byz)
        self._round.update(info=info,
                           rejected=len(step.rejected), no_update=[p for p in sorted(answered) if answered[p] is None],
                           byzantine_sampled=sum(p in byz for p in self._round["sampled"]),
                           train_s=time.perf_counter() - self._round["t0"])
        self.timing["train_s"] += self._round["train_s"]
        self.timing["rounds"] += 1
        numeric: dict[str, Any] = {k: float(v) for k, v in step.info.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return ArrayRecord({"shared": Array(self.shared.numpy())}), MetricRecord(numeric)

    # -------------------------------------------------------------- evaluation
    def _eval_round(self, r: int) -> bool:
        return r % self.cfg["train.eval_every"] == 0 or r == self.cfg["train.rounds"]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self._round["e0"] = time.perf_counter()
        if not self._eval_round(server_round):
            self._finish_round(server_round, None)
            return []
        online = set(grid.get_node_ids()) - self.lost
        clients = [p for p in self.roster.honest + sorted(self.roster.holdout) if self.roster.node_of[p] in online]
        holdout = self.roster.holdout
        return self._messages(clients, server_round, lambda p: "query.transfer" if p in holdout else "evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset
        if not self._eval_round(server_round):
            return None
        honest, transfer, ids = [], [], []
        for reply in replies:
            if reply.has_error():
                log.warning("round %d: evaluation failed on node %s: %s", server_round, reply.metadata.src_node_id,
                            reply.error.reason)
                continue
            m = metrics_of(reply)
            honest_ids = set(self.roster.honest)
            is_transfer = bool(scalar(m["transfer"]))
            personal = ints(m["personal"]) if "personal" in m else [-1] * len(ints(m["partition-ids"]))
            for p, acc, loss, n, own in zip(ints(m["partition-ids"]), floats(m["accuracy"]), floats(m["loss"]),
                                            ints(m["num-examples"]), personal):
                res = EvalResult(acc, loss, n, None if own < 0 else bool(own))
                if is_transfer:
                    transfer.append(res)
                elif p in honest_ids:
                    honest.append(res)
                    ids.append(p)
        classification = not all(np.isnan(r.accuracy) for r in honest if r.num_samples)
        metrics = summarize(honest, weighted=self.cfg["eval.protocol"] == "fedrep", classification=classification)
        order = sorted(range(len(ids)), key=ids.__getitem__)
        metrics["client_scores"] = client_scores([ids[i] for i in order], [honest[i] for i in order])
        if transfer:
            accs = [r.accuracy for r in transfer if r.num_samples]
            metrics["transfer_acc_mean"] = float(np.mean(accs)) if accs else None
        self._finish_round(server_round, metrics)
        return MetricRecord({k: float(v) for k, v in metrics.items()  # type: ignore[misc]
                             if isinstance(v, (int, float))})

    def _finish_round(self, r: int, metrics: dict[str, Any] | None) -> None:
        self.timing["eval_s"] += time.perf_counter() - self._round.get("e0", time.perf_counter())
        if metrics is not None:
            row = self.record.add_evaluation(r, metrics, round_s=self._round["train_s"],
                                             byzantine_sampled=self._round["byzantine_sampled"],
                                             rejected=self._round["rejected"],
                                             no_update=len(self._round["no_update"]), step_info=self._round["info"])
            if self.progress is not None and row.get("honest_acc_mean") is not None:
                self.progress.set_postfix(acc=f"{row['honest_acc_mean']:.4f}")
        if self.progress is not None:
            self.progress.update(1)
        if self.checkpoint_dir is not None:   # every round: a restarted server loses at most the round under way
            save_checkpoint(self.checkpoint_dir, self.state(r))
        if self.progress_file is not None:
            last = self.record.history[-1] if self.record.history else {}
            write_json(self.progress_file, {"round": r, "rounds": self.cfg["train.rounds"],
                                            "honest_acc_mean": last.get("honest_acc_mean")})

    def _shrunk_note(self) -> list[str]:
        """A note when the last evaluation scored fewer honest clients than the federation has (nodes lost)."""
        last = self.record.history[-1] if self.record.history else {}
        scored, honest = last.get("clients_scored"), len(self.roster.honest)
        if scored is None or scored >= honest:
            return []
        return [f"the last evaluation scored {scored} of {honest} honest clients: the others' nodes stopped "
                "answering (short_rounds), so the accuracy is over fewer clients"]

    # -------------------------------------------------------------- checkpoints
    def state(self, r: int) -> dict[str, Any]:
        """The server's state after round r, in the built-in engine's checkpoint format (the heads live on
        the nodes: ``private`` is empty; ``node_state``: where they keep them, node config ``state-dir``)."""
        from ..checkpoint import config_fingerprint, config_identity

        return {"round": r, "rounds": self.cfg["train.rounds"], "engine": "flower", "shared": self.shared.clone(),
                "private": torch.zeros(0), "last_step": self.last_step, **self.record.state(),
                "reputation": None if self.reputation is None else self.reputation.state(),
                "short_rounds": list(self.short_rounds), "rejoined": list(self.rejoined), "elapsed": dict(self.timing),
                "roster": {"clients": sorted(self.roster.node_of), "byzantine": sorted(self.roster.byzantine),
                           "holdout": sorted(self.roster.holdout)},
                "config": config_identity(self.identity), "fingerprint": config_fingerprint(self.identity)}

    def restore(self, run_dir: Path) -> int:
        """Continue from ``run_dir/checkpoint.pt`` (a checkpoint of this experiment, with the same clients
        and roles); returns the round it was written after."""
        from ..checkpoint import CheckpointError, check_fits, load_checkpoint

        st = load_checkpoint(run_dir, cfg=self.identity)
        where = f"checkpoint {str(run_dir / 'checkpoint.pt')!r}"
        if st.get("engine") != "flower":
            raise CheckpointError(f"{where} was written by the built-in engine; resume it with brmtrl run --resume")
        roster = {"clients": sorted(self.roster.node_of), "byzantine": sorted(self.roster.byzantine),
                  "holdout": sorted(self.roster.holdout)}
        if st.get("roster") != roster:
            raise CheckpointError(f"{where} was written by a federation with other clients or roles than the nodes "
                                  "connected now")
        check_fits("the shared vector (φ)", st["shared"], self.shared, where)
        self.shared = st["shared"].to(torch.float32)
        self.last_step = st.get("last_step")
        self.record.restore(st)
        if self.reputation is not None and st.get("reputation") is not None:
            self.reputation.restore(st["reputation"])
        self.short_rounds = list(st.get("short_rounds", []))
        self.rejoined = list(st.get("rejoined", []))
        self.timing = dict(st["elapsed"])
        self.offset = int(st["round"])
        return self.offset

    def summary(self) -> None:
        log.info("BR-MTRL strategy: %s, f=%d, %d clients per round", self.agg.name, self.agg.f, self.m)

    # -------------------------------------------------------------- results
    def results(self, engine: str, wall_s: float) -> dict[str, Any]:
        rounds = max(self.timing["rounds"], 1)
        return self.record.results(
            config=self.config_record, engine=engine,
            data={"name": self.cfg["dataset.name"], "num_clients": self.roster.num_clients,
                  "train_samples": int(sum(self.roster.train_samples.values()))},
            final=self.record.final(byzantine=sorted(self.roster.byzantine), holdout=sorted(self.roster.holdout),
                                    extra={"honest_clients": len(self.roster.honest)}),
            transfer=None, short_rounds=self.short_rounds,
            reputation=None if self.reputation is None else self.reputation.summary(sorted(self.roster.byzantine)),
            notes=["Byzantine roles come from each node's config (in simulation, from the seed); the server's f "
                   "comes from its declared aggregator.byzantine_fraction / aggregator.f"]
            + list(self.simulation.notes if self.simulation is not None else ())
            + (["transfer.shots (the few-shot study of new clients) runs on the built-in engine only"]
               if self.cfg["transfer.shots"] else [])
            + [f"round {e['round']}: clients {e['clients']} came back on a restarted node" for e in self.rejoined]
            + self._shrunk_note(),
            timing={"total_s": round(wall_s, 4), "per_round_s": round(self.timing["train_s"] / rounds, 4),
                    "eval_total_s": round(self.timing["eval_s"], 4), "rounds_timed": self.timing["rounds"],
                    "device": "nodes"})


def initial_shared(cfg: Config, roster: Roster) -> torch.Tensor:
    """φ at round 0: the seeded initial model's shared part, as every client builds it."""
    model = build_model_for(cfg, roster.model_spec, torch.device("cpu"))
    shared = get_flat(model, resolve_local_rule(cfg["algorithm.name"]).shared)
    if shared.numel() != roster.shared_size:
        raise FederationError(f"the nodes' φ has {roster.shared_size} values, the server's {shared.numel()}: "
                              "nodes and server run different configs or brmtrl versions")
    return shared


def run_server(grid: Grid, cfg: Config, out_dir: Path, *, engine: str, expected_clients: int | None = None,
               progress: bool = False, simulation: SimulationHooks | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Drive the federation: discover the nodes, run ``train.rounds`` rounds, write the outputs. The
    server's state is checkpointed into ``out_dir`` after every round; with ``resume``, a checkpoint found
    there is continued from (the nodes keep their clients' heads in their ``state-dir``)."""
    t0 = time.perf_counter()
    cfg_json = config_to_json(cfg)
    expected = expected_clients if expected_clients is not None else cfg["dataset.num_clients"]
    roster = discover(grid, cfg_json, expected, cfg["flower.connect_timeout"],
                      roles_from_seed=simulation is not None and simulation.roles_from_seed)
    strategy = BRMTRLStrategy(cfg, roster, initial_shared(cfg, roster), simulation=simulation)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", dict(cfg))   # what --resume reads
    done = strategy.restore(out_dir) if resume and (out_dir / "checkpoint.pt").is_file() else 0
    if done:
        log.info("resuming after round %d of %d from %s", done, cfg["train.rounds"], out_dir / "checkpoint.pt")
    strategy.checkpoint_dir = out_dir
    strategy.progress_file = out_dir / "progress.json"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg["train.rounds"], initial=done, desc="rounds", unit="round", dynamic_ncols=True)
        strategy.progress = bar
    try:
        if done < cfg["train.rounds"]:
            strategy.start(grid, ArrayRecord({"shared": Array(strategy.shared.numpy())}),
                           num_rounds=cfg["train.rounds"] - done, timeout=cfg["flower.round_timeout"])
    finally:
        if bar is not None:
            bar.close()
    results = strategy.results(engine, time.perf_counter() - t0)
    write_outputs(out_dir, results)
    return results


def make_server_app(cfg: Config | None = None, out_dir: str | Path | None = None, *, engine: str = "flower",
                    expected_clients: int | None = None, progress: bool = False,
                    simulation: SimulationHooks | None = None) -> ServerApp:
    """A ``ServerApp`` for ``cfg`` writing into ``out_dir``; without them it reads the run config
    (``brmtrl-config``: the resolved config as JSON, ``brmtrl-out``: the output directory), as
    ``flwr run --run-config`` passes them in a deployment. ``simulation``: Flower's simulation engine
    only (:class:`SimulationHooks`); a deployed app has none."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        run_cfg = cfg if cfg is not None else config_from_json(str(rc["brmtrl-config"]))
        out = Path(out_dir) if out_dir is not None else Path(str(rc.get("brmtrl-out", "runs/flower")))
        expected = expected_clients if expected_clients is not None else (
            int(rc["brmtrl-clients"]) if "brmtrl-clients" in rc else None)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "status.json", {"status": "running"})   # flwr run's exit code does not say how it ended
        try:
            run_server(grid, run_cfg, out, engine=engine, expected_clients=expected, progress=progress,
                       simulation=simulation, resume=bool(rc.get("brmtrl-resume", False)))
        except Exception as exc:  # the caller (simulation or deploy-local) reads the reason from here
            (out / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
            write_json(out / "status.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            raise
        write_json(out / "status.json", {"status": "finished"})

    return app


#: the ServerApp a Flower App (``pyproject.toml`` ``[tool.flwr.app.components]``) names
app = make_server_app()
