"""brmtrl: Byzantine-resilient personalized federated learning (BR-MTRL).

Design at a glance: :mod:`brmtrl.data` (datasets and partitions), :mod:`brmtrl.models` and
:mod:`brmtrl.split` (the φ / head split), :mod:`brmtrl.local_update` (local update rules),
:mod:`brmtrl.aggregators` and :mod:`brmtrl.attacks` (pure functions on stacked updates),
:mod:`brmtrl.engine` (the built-in simulation), :mod:`brmtrl.flower` (the Flower adapter),
:mod:`brmtrl.report`, :mod:`brmtrl.api` (:func:`run`, from Python) and :mod:`brmtrl.cli`.
"""

from typing import Any

from .config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "run", "__version__"]


def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a configuration and return its ``results.json`` dictionary (:func:`brmtrl.api.run`; imported
    on first use, so ``import brmtrl`` stays light)."""
    from .api import run as run_config

    return run_config(*args, **kwargs)
