"""A user's own aggregator and attack for brmtrl (docs/extending.md). Put this file's folder on
PYTHONPATH and name them in a config: aggregator.name = "my_rules:coordinate_trimmed_mean",
attack.name = "my_rules:scaled_noise"."""

import torch


def coordinate_trimmed_mean(x: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Per coordinate, drop the f smallest and f largest values, average the rest. brmtrl passes the
    f its server assumes (aggregator.byzantine_fraction / aggregator.f)."""
    n = x.shape[0]
    k = min(f, (n - 1) // 2)
    return x.sort(dim=0).values[k:n - k].mean(dim=0)


def scaled_noise(update: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a Byzantine client sends instead of its honest update: noise as large as the update."""
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype).to(update.device)
    return noise * update.norm() / noise.norm()
