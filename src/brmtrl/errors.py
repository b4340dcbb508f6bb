"""Every error a user can see, in one place. Each is reported by the CLI as one line (exit code 2)
that names what is wrong: the config key, the file, the client or the node."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "DeployError", "FederationError", "GridError",
           "PluginError"]


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (CLI exit code 2)."""


class GridError(ConfigError):
    """A problem with a grid file or a sweep directory (one line, CLI exit code 2)."""


class PluginError(ValueError):
    """A plugged-in name that cannot be used: the module, the function or its signature."""


class DataError(RuntimeError):
    """Data that cannot be read or reached; the message names the file or source and what was expected."""


class CheckpointError(DataError):
    """A checkpoint that cannot be written, read, trusted or used with this configuration."""


class FederationError(RuntimeError):
    """The federation cannot go on (too few clients answer, nodes disagree); the message says why."""


class DeployError(FederationError):
    """The local federation could not be started or did not finish; the message says why."""
