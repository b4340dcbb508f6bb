"""A run directory: its files, and running a configuration into one on the built-in engine.

``brmtrl run`` and every cell of ``brmtrl sweep`` call :func:`run_builtin`; neither the sweep nor a
Python user goes through the CLI to run a configuration.

>>> from brmtrl.config import load_config                         # doctest: +SKIP
>>> results = run_builtin(load_config("configs/quick.toml"), Path("runs/q"), progress=False, resume=False)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from .storage import remove_stale_temps
from .report import write_json, write_outputs

__all__ = ["CONFIG_FILE", "run_builtin", "write_config"]

#: the run's resolved configuration, what ``--resume`` reads
CONFIG_FILE = "config.json"


def write_config(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """Create ``run_dir`` and write the configuration to ``run_dir/config.json`` atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, dict(cfg))


def run_builtin(cfg: Any, run_dir: Path, *, progress: bool, resume: bool, announce: bool = False) -> dict[str, Any]:
    """Run ``cfg`` on the built-in engine into ``run_dir``, continuing its checkpoint when ``resume``,
    and write the run's outputs; return ``results.json``'s dictionary."""
    from .engine import Simulation

    sim = Simulation(cfg, out_dir=run_dir, progress=progress)
    if resume:
        remove_stale_temps(run_dir)
        sim.restore(run_dir)
        if announce:
            print(f"resuming {run_dir} at round {sim.start_round}", file=sys.stderr)
    write_config(run_dir, cfg)  # on resume too: the directory describes what was run (train.rounds, ...)
    results = sim.run()
    write_outputs(run_dir, results)
    return results
