"""The server's f does not depend on the simulated attack: the quick config with ``attack.name = none``
and with ``sign_flip``, on the built-in engine, Flower's simulation engine and ``deploy-local``.

    python experiments/declared_f.py [--rounds 3] [--supernodes 4] [--engines builtin,flower,deploy-local]

Prints one row per engine and attack: the ``f_assumed`` of every evaluated round, the Byzantine clients
(the simulation's truth), and the final honest accuracy. Nothing here is part of the test suite
(``tests/test_server_assumption.py`` checks the same property in seconds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brmtrl.config import load_config  # noqa: E402
from brmtrl.engine import Simulation  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick.toml"


def run(engine: str, cfg, out: Path, supernodes: int) -> dict:
    if engine == "builtin":
        return Simulation(cfg).run()
    if engine == "flower":
        from brmtrl.flower.simulation import run_flower_simulation

        return run_flower_simulation(cfg, out)
    from brmtrl.flower.deploy import deploy_local

    return deploy_local(cfg, out, supernodes=supernodes, timeout=3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--supernodes", type=int, default=4)
    ap.add_argument("--engines", default="builtin,flower,deploy-local")
    args = ap.parse_args()
    print(f"command: python experiments/declared_f.py --rounds {args.rounds} --supernodes {args.supernodes} "
          f"--engines {args.engines}\n")
    print("| engine | attack.name | f_assumed per evaluated round | Byzantine clients | honest accuracy |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            for attack in ("none", "sign_flip"):
                cfg = load_config(CONFIG, ["threads=1", "device=cpu", f"train.rounds={args.rounds}",
                                           "train.eval_every=1", "train.checkpoint_every=0", f"attack.name={attack}"])
                res = run(engine, cfg, Path(tmp) / f"{engine}-{attack}", args.supernodes)
                fs = [h["f_assumed"] for h in res["history"]]
                print(f"| {engine} | {attack} | {fs} | {len(res['final']['byzantine_clients'])} | "
                      f"{res['final']['honest_acc_mean']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
