"""brmtrl: Byzantine-resilient personalized federated learning (BR-MTRL).

Design at a glance: :mod:`brmtrl.data` (datasets and partitions), :mod:`brmtrl.models` and
:mod:`brmtrl.split` (the φ / head split), :mod:`brmtrl.local_update` (local update rules),
:mod:`brmtrl.aggregators` and :mod:`brmtrl.attacks` (pure functions on stacked updates),
:mod:`brmtrl.engine` (the built-in simulation), :mod:`brmtrl.report` and :mod:`brmtrl.cli`.
"""

from .config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "__version__"]
