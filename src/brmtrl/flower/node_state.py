"""A node's private state on its own disk, so that a restarted SuperNode keeps its clients' heads.

Flower keeps a ClientApp's ``context.state`` in the SuperNode's memory, for one run: a SuperNode that
restarts, or a run that a restarted server resumes (a new Flower run), would give its clients fresh heads,
which for a personalized method is data loss. With ``state-dir`` in its node config
(``flower-supernode --node-config "partition-ids=0-9 state-dir='/var/lib/brmtrl'"``) a node writes, after
each round it trains, each client's private part (and the guard's personal model) to
``<state-dir>/client-<id>.pt``, atomically, and reads it back when it needs it. Nothing of it is sent
anywhere.

Each file is tagged with the experiment (:func:`brmtrl.checkpoint.config_fingerprint` of the run's
config as the server sends it): a state directory written by another experiment is refused with an error
naming it. Within one experiment, a file keeps the states after the client's last two trained rounds, and
rounds decide which one counts, so that a server resumed from its checkpoint (which redoes the rounds after
it) gets exactly what an uninterrupted run would:

* training round t uses the latest state of a round before t, after dropping any of round t or later
  (a round the server is doing again);
* evaluating in round t uses the latest state of round t or before.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["NodeState", "StateDirError"]


class StateDirError(ConfigError):
    """A node's ``state-dir`` that cannot be used: another experiment's, unreadable, or not writable."""


class NodeState:
    """The private state of one node's clients under ``folder``, for the experiment ``fingerprint``."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder).expanduser()
        self.fingerprint = fingerprint
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"node config 'state-dir' = {str(self.folder)!r} cannot be created: {exc}") from None

    def _path(self, client: int) -> Path:
        return self.folder / f"client-{int(client)}.pt"

    def _read(self, client: int) -> dict[str, Any]:
        path = self._path(client)
        if not path.exists():
            return {"fingerprint": self.fingerprint, "rounds": {}}
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file
            raise StateDirError(f"node config 'state-dir': {str(path)!r} is unreadable ({type(exc).__name__})") from None
        if data.get("fingerprint") != self.fingerprint:
            raise StateDirError(f"node config 'state-dir' = {str(self.folder)!r} holds client {client}'s state of "
                                "another experiment (its config fingerprint differs); give this run its own "
                                "state-dir or empty that one")
        return data

    def check(self, clients: list[int]) -> None:
        """Refuse (:class:`StateDirError`) when any of ``clients`` has another experiment's state here,
        before the node trains, and so writes, any of them."""
        for client in clients:
            self._read(client)

    def load(self, client: int, round_: int, *, training: bool) -> dict[str, torch.Tensor]:
        """The client's state that counts in ``round_``: ``{"private": ..., "guard": ...}`` (keys absent
        before its first round)."""
        rounds = self._read(client)["rounds"]
        usable = [r for r in rounds if (r < round_ if training else r <= round_)]
        return dict(rounds[max(usable)]) if usable else {}

    def save(self, client: int, round_: int, state: dict[str, torch.Tensor]) -> None:
        """Keep ``state`` as the client's state after training ``round_`` (and the one before it);
        atomically: a crash leaves the previous file."""
        data = self._read(client)
        rounds = {r: s for r, s in data["rounds"].items() if r < round_}
        rounds[int(round_)] = {k: v.detach().to("cpu").clone() for k, v in state.items()}
        keep = sorted(rounds)[-2:]
        data = {"fingerprint": self.fingerprint, "rounds": {r: rounds[r] for r in keep}}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".client-", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(data, tmp)
            os.replace(tmp, self._path(client))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
