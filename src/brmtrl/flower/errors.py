"""Errors of the Flower engines, reported by the CLI as one line (exit code 2)."""

from __future__ import annotations

__all__ = ["DeployError", "FederationError"]


class FederationError(RuntimeError):
    """The federation cannot go on (too few clients answer, nodes disagree); the message says why."""


class DeployError(FederationError):
    """The local federation could not be started or did not finish; the message says why."""
