"""``brmtrl run --engine flower``: the config on Flower's simulation engine (Ray backend).

One virtual SuperNode per client (Flower sets each node's ``partition-id``); the ServerApp runs in
this process and writes the run's outputs. The simulation adds what a real federation lacks
(:class:`~brmtrl.flower.server_app.SimulationHooks`): the config's seed picks the Byzantine clients, and
an omniscient attack is applied to the round's updates before the server step receives them. Ray gets ``flower.backend_cpus`` CPUs (0: all) and one
CPU per ClientApp; with a GPU each ClientApp gets a share of it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .. import attacks as attack_mod
from ..adversary import omniscient_adversary
from ..config import Config
from .errors import FederationError
from .client_app import app as client_app
from .ray_start import start_ray
from .server_app import SimulationHooks, make_server_app

__all__ = ["run_flower_simulation"]


def run_flower_simulation(cfg: Config, out_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation engine; returns the ``results.json`` dictionary."""
    from flwr.simulation import run_simulation

    from ..data import load_data

    out = Path(out_dir)
    n = load_data(cfg).num_clients
    cpus = cfg["flower.backend_cpus"] or os.cpu_count() or 1
    resources: dict[str, Any] = {"num_cpus": 1}
    if torch.cuda.is_available() and cfg["device"] != "cpu":
        resources["num_gpus"] = 1.0 / min(n, 8)
    # address "local": a Ray instance of its own, never a cluster that runs on this machine (a sweep's)
    backend = {"client_resources": resources, "init_args": {"address": "local", "num_cpus": cpus,
                                                            "logging_level": logging.ERROR, "log_to_driver": False}}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray starts its workers (here: the ClientApps, all of the simulation's work) at niceness 15, so that
    # any other process on the machine starves them: a 20 s simulation took minutes beside busy loops
    os.environ.setdefault("RAY_worker_niceness", "0")
    notes = ((f"attack.name = {cfg['attack.name']!r} reads the round's honest updates: the simulated adversary "
              "applies it before the server step",) if attack_mod.is_omniscient(cfg["attack.name"]) else ())
    hooks = SimulationHooks(adversary=lambda byzantine, size, agg: omniscient_adversary(cfg, byzantine, size=size,
                                                                                      aggregation=agg),
                            roles_from_seed=True, notes=notes)
    server = make_server_app(cfg, out, engine="flower-simulation", expected_clients=n, progress=progress,
                             simulation=hooks)
    started = start_ray(backend["init_args"])     # Flower uses it; a start that times out is retried
    try:
        run_simulation(server_app=server, client_app=client_app, num_supernodes=n, backend_config=backend)
    finally:
        if started:
            import ray

            ray.shutdown()                          # Flower shuts it down at the end; also after a failure
    err = out / "error.txt"
    if err.is_file():
        raise FederationError(f"the Flower simulation failed: {err.read_text().strip()}")
    import json

    result = json.loads((out / "results.json").read_text())
    return result
