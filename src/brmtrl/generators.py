"""The seeded generators every engine draws from: one per (seed, round, client, stream), so a client
trains, attacks and is scored the same wherever it runs and after a resume."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["client_generator"]


def client_generator(seed: int, round_: int, client: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one client in one round, independent of every other (seed, round, client,
    stream): stream 0 trains, 2 attacks, 3 transfers, 4 refits heads for evaluation, 5 fine-tunes
    (``fedavg_ft``), 6 draws the few-shot samples of ``transfer.shots``, 7 (client 0) the server step's
    omniscient attack of the round, 8 (round 0) the guard's validation part, 9 trains the guard's
    personal model. Every engine draws from these, so a client trains the same wherever it runs."""
    state = np.random.SeedSequence([seed, round_, client, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
