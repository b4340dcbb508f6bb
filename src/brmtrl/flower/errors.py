"""Errors of the Flower engines, reported by the CLI as one line (exit code 2)."""

from __future__ import annotations

__all__ = ["DeployError", "FederationError", "check_real_attack"]


from ..errors import DeployError, FederationError  # noqa: F401  (re-exported)


def check_real_attack(cfg: dict | object, engine: str) -> None:
    """A real federation (anything but Flower's simulation engine) cannot run an attack that reads the
    honest updates of the round: no node sees another's update, and the server must not forge one."""
    from .. import attacks

    name = cfg["attack.name"]  # type: ignore[index]
    if engine != "flower-simulation" and attacks.is_omniscient(name):
        raise FederationError(
            f"config key 'attack.name' = {name!r} reads the honest updates of the round, which no node of a real "
            "federation sees; it runs in simulation only (brmtrl run, brmtrl run --engine flower). On a real "
            "federation use an attack a node runs on its own update (" +
            ", ".join(sorted(set(attacks.ATTACKS) - attacks.OMNISCIENT)) + ")")
